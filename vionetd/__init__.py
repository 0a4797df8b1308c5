"""vionetd: a privilege-separated vhost-user virtio-net device backed by a tap."""
