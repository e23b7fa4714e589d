#!/usr/bin/env python3
"""Tiny client of the mock provider's control API, for tests run from psql.

    python3 test/mock/mockctl.py last [N] [PATH_PREFIX]   the last N requests received (JSON)
    python3 test/mock/mockctl.py stats                    counters (JSON)
    python3 test/mock/mockctl.py reset                    clear log and counters

The port comes from $MOCK_PORT.
"""
import json
import os
import sys
import urllib.request

base = "http://127.0.0.1:%s" % os.environ["MOCK_PORT"]


def call(path, method="GET"):
    req = urllib.request.Request(base + path, method=method,
                                 data=b"{}" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read().decode())


cmd = sys.argv[1] if len(sys.argv) > 1 else "stats"
if cmd == "last":
    n = sys.argv[2] if len(sys.argv) > 2 else "1"
    q = "?last=%s" % n
    if len(sys.argv) > 3:
        q += "&path=%s" % sys.argv[3]
    out = call("/_mock/requests" + q)["requests"]
elif cmd == "stats":
    out = call("/_mock/stats")
elif cmd == "reset":
    out = call("/_mock/reset", "POST")
else:
    sys.exit("unknown command %r" % cmd)
print(json.dumps(out, separators=(",", ":")))
