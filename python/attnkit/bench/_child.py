"""Child process of the memory suite: rebuild one case for one contender, call it once, print peak RSS as JSON.

    python -m attnkit.bench._child '{"kind": "sdpa", "params": {...}, "contender": "attnkit", "threads": 2, "isa": null}'
"""
import json
import sys

from attnkit.bench import harness, suites


def main() -> None:
    spec = json.loads(sys.argv[1])
    who = spec["contender"]
    suites.configure(spec["threads"], spec.get("isa"), [who])
    fns, out_alloc = suites.make_fns(spec["kind"], spec["params"], [who])  # inputs and out= allocated, touched
    extra, seconds = harness.peak_extra_bytes(fns[who], out_alloc[who])
    print(json.dumps({"peak_extra_bytes": extra, "seconds": seconds}))


if __name__ == "__main__":
    main()
