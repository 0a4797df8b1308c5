/*
 * datapath.c: what the TX and RX paths share: the names of their counters,
 * so the worker exports ctx->cnt[] generically (dp_counter_name(i) for every
 * i < DC_MAX: fixed names, "ring_<vq_err>", "refused_<vnet_reason>").
 */
#include <stdio.h>
#include <time.h>

#include "core.h"
#include "virtq.h"
#include "datapath.h"

static const char *const fixed[DC_FIXED_MAX] = {
	[DC_FRAMES] = "frames",
	[DC_BYTES] = "bytes",
	[DC_PASSTHROUGH] = "passthrough",
	[DC_SW_CSUM] = "sw_csum",
	[DC_SW_SEGMENTED] = "sw_segmented",
	[DC_SEGMENTS_OUT] = "segments_out",
	[DC_NOTIFICATIONS] = "notifications",
	[DC_KICKS] = "kicks",
	[DC_BATCHES] = "batches",
	[DC_DISABLED_DROP] = "disabled_drop",
	[DC_TAP_FULL] = "tap_full",
	[DC_TAP_ERROR] = "tap_error",
	[DC_NO_HDR] = "no_hdr",
	[DC_LOCKED_MAC_DROP] = "locked_mac_drop",
	[DC_DHCP_DIVERTED] = "dhcp_diverted",
	[DC_DIVERT_TOO_LONG] = "divert_too_long",
	[DC_SW_GSO_FAIL] = "sw_gso_fail",
	[DC_SW_CSUM_FAIL] = "sw_csum_fail",
	[DC_RX_NO_BUFFERS] = "rx_no_buffers",
	[DC_RX_TOO_BIG] = "rx_too_big",
	[DC_RX_BAD_HDR] = "rx_bad_hdr",
	[DC_RX_BUF_SMALL] = "rx_buf_small",
	[DC_RX_ABANDONED] = "rx_abandoned",
	[DC_RX_BOUNCED] = "rx_bounced",
	[DC_LOCKED_ARP_DROP] = "locked_arp_drop",
	[DC_GSO_IN] = "gso_frames",
	[DC_CSUM_IN] = "partial_csum_frames",
	[DC_RX_INJECTED] = "rx_injected",
	[DC_RX_INJECT_NOBUF] = "rx_inject_nobuf",
	[DC_LINGER_FOUND] = "linger_found",
	[DC_NOTIFY_DEFERRED] = "notify_deferred",
	[DC_RX_SPILLED] = "rx_spilled",
	[DC_TAP_SUBMITS] = "tap_submits",
	[DC_TAP_URING_OFF] = "tap_uring_off",
	[DC_V6_DIVERTED] = "v6_diverted",
	[DC_V6_ROUTER_DROP] = "v6_router_drop",
	[DC_LOCKED_IP6_DROP] = "locked_ip6_drop",
	[DC_V6_UNPARSED_DROP] = "v6_unparsed_drop",
	[DC_CSUM_FIELD_DROP] = "csum_field_drop",
	[DC_RATE_HELD] = "rate_held",
};

uint64_t dp_now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);   /* the vDSO: no system call */
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

uint64_t dp_linger_ns(int linger_us)
{
	if (linger_us < 0)
		return 0;
	return (uint64_t)(linger_us ? linger_us : DP_LINGER_US) * 1000u;
}

int dp_complete(struct vq *q, uint64_t *cnt, uint64_t *since, uint64_t *last,
		uint64_t window, int force)
{
	uint64_t now;
	int sent;

	vq_publish(q);
	if (q->used_idx == q->signalled_used && *since == 0)
		return 0;               /* nothing completed since the last signal */
	now = dp_now_ns();
	if (!force && window && now - *last < DP_QUIET_WINDOWS * window &&
	    !dp_signal_due(*since, window, now)) {
		if (*since == 0)
			*since = now;
		cnt[DC_NOTIFY_DEFERRED]++;
		return 0;
	}
	*since = 0;
	sent = vq_notify(q);
	if (sent)
		*last = now;    /* only a signal written counts */
	return sent;
}

int dp_signal_due(uint64_t since, uint64_t window, uint64_t now)
{
	return since && now - since >= window;
}

void dp_hold(uint64_t *until, uint64_t *cnt, uint64_t wait)
{
	if (!*until)
		cnt[DC_RATE_HELD]++;
	*until = dp_now_ns() + wait;
}

int dp_hold_over(uint64_t *until, uint64_t now)
{
	if (!*until || now < *until)
		return 0;
	*until = 0;
	return 1;
}

struct timespec dp_timespec(uint64_t ns)
{
	return (struct timespec){ .tv_sec = (time_t)(ns / 1000000000u),
				  .tv_nsec = (long)(ns % 1000000000u) };
}

const char *dp_counter_name(int i)
{
	/* Built once, then constant: the worker is single-threaded. */
	static char composed[DC_MAX - DC_FIXED_MAX][48];
	static int ready;

	if (i < 0 || i >= DC_MAX)
		return "unknown";
	if (i < DC_FIXED_MAX)
		return fixed[i] ? fixed[i] : "unknown";
	if (!ready) {
		int k;

		for (k = 0; k < VQE_MAX; k++)
			snprintf(composed[k], sizeof(composed[k]), "ring_%s", vq_err_name(k));
		for (k = 0; k < VR_REASON_MAX; k++)
			snprintf(composed[VQE_MAX + k], sizeof(composed[0]), "refused_%s",
				 vnet_reason_name(k));
		ready = 1;
	}
	return composed[i - DC_FIXED_MAX];
}
