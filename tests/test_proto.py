"""vionetd/vionetd_pb2.py is generated from proto/vionetd.proto and kept in
git: regenerate it here and fail if the committed file differs (make proto)."""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generated_module_matches_the_schema():
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + os.path.join(ROOT, "proto"),
                        "--python_out=" + out, os.path.join(ROOT, "proto", "vionetd.proto")],
                       check=True, timeout=60)
        with open(os.path.join(out, "vionetd_pb2.py")) as f:
            fresh = f.read()
    with open(os.path.join(ROOT, "vionetd", "vionetd_pb2.py")) as f:
        committed = f.read()
    assert fresh == committed, "vionetd_pb2.py is stale: run make proto"
