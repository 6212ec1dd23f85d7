#!/usr/bin/env python3
"""Rebuild this corpus from headscale's recorded Tailscale answers.

    python3 extract.py HEADSCALE/hscontrol/policy/v2/testdata > /dev/null

Reads every `<category>_results/*.hujson` capture (and `issue_*`), keeps what the parity test
needs -- the policy text, the topology (without hostnames and user ids), the API's answer
(code, message) and each node's packet filter -- and writes one JSON document per line,
sorted by test id, to `<category>.jsonl` next to this script. `sshtest_results` is left out:
tsk8s does not evaluate `sshTests` (it passes them through).
"""
import glob
import json
import os
import re
import sys


def hujson(text):
    out, i, n, in_str = [], 0, len(text), False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_str = False
            i += 1
            continue
        if c == '"':
            in_str = True
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            i = text.index("*/", i + 2) + 2
            continue
        out.append(c)
        i += 1
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", "".join(out)))


def main(src):
    here = os.path.dirname(os.path.abspath(__file__))
    by_cat = {}
    for path in sorted(glob.glob(os.path.join(src, "*", "*.hujson"))):
        cat = os.path.basename(os.path.dirname(path)).removesuffix("_results")
        if cat == "sshtest":
            continue
        d = hujson(open(path, encoding="utf-8").read())
        inp = d["input"]
        policy = inp["full_policy"]
        topo = d["topology"]
        for u in topo.get("users") or []:
            u.pop("id", None)
        for node in (topo.get("nodes") or {}).values():
            node.pop("hostname", None)
        body = inp.get("api_response_body") or {}
        case = {
            "id": d["test_id"],
            "code": inp["api_response_code"],
            "message": body.get("message", ""),
            "policy": policy if isinstance(policy, str) else json.dumps(policy, separators=(",", ":")),
            "topology": topo,
            "filters": {
                n: (c or {}).get("packet_filter_rules")
                for n, c in sorted((d.get("captures") or {}).items())
            },
        }
        by_cat.setdefault(cat, []).append(case)
    for cat, cases in by_cat.items():
        cases.sort(key=lambda c: c["id"])
        with open(os.path.join(here, f"{cat}.jsonl"), "w", encoding="utf-8") as f:
            for c in cases:
                f.write(json.dumps(c, separators=(",", ":"), sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
