"""Turn a pytest-benchmark JSON file (--benchmark-json) of benchmarks/ into markdown tables.

    python benchmarks/report.py results.json [more.json ...] > table.md

One table per file, one row per benchmark: device, date, case, impl, mode, dtype, instances,
median time, rounds, throughput (GFLOP/s, TFLOP/s on CUDA, GB/s for the suites that
record bytes instead of flops, images/s for training steps), peak memory, speed-up vs eager and memory
ratio vs eager. Both ratios are eager / this implementation (> 1: this one is faster or
smaller), computed from the results of the same op, case, mode, device and dtype in the same
file. Where eager was skipped (too large) the memory ratio is taken against eager's estimate
and marked "~". Reads any suite whose results carry op, case, impl, mode, device and dtype
in extra_info. Uses only the standard library.
"""
import argparse
import json
import sys

IMPL_ORDER = {"eager": 0, "compiled": 1, "fused": 2}
MODE_ORDER = {"fwd": 0, "fwd_bwd": 1}


def _bytes(n):
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _seconds(s):
    if s is None:
        return "n/a"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _ratio(x, approx=False):
    return "n/a" if x is None else f"{'~' if approx else ''}{x:.2f}x"


def rows_of(data):
    date = data.get("datetime", "")[:10]
    entries = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "impl" not in info:
            continue
        entries.append((b, info))
    eager = {}
    for b, info in entries:
        if info["impl"] == "eager":
            key = (info["op"], info["case"], info["mode"], info["device"], info["dtype"])
            eager[key] = (b["stats"]["median"], info.get("peak_memory_bytes"))
    out = []
    for b, info in entries:
        key = (info["op"], info["case"], info["mode"], info["device"], info["dtype"])
        median = b["stats"]["median"]
        peak = info.get("peak_memory_bytes")
        speedup = mem_ratio = None
        approx = False
        if key in eager:
            e_median, e_peak = eager[key]
            speedup = e_median / median if median else None
            mem_ratio = e_peak / peak if (e_peak and peak) else None
        elif peak and info.get("eager_peak_memory_estimate_bytes"):
            mem_ratio, approx = info["eager_peak_memory_estimate_bytes"] / peak, True
        if info["device"] == "cuda" and "tflop_per_s" in info:
            rate = f"{info['tflop_per_s']:.2f} TFLOP/s"
        elif "gflop_per_s" in info:
            rate = f"{info['gflop_per_s']:.1f} GFLOP/s"
        elif "gb_per_s" in info:
            rate = f"{info['gb_per_s']:.1f} GB/s"
        elif "images_per_s" in info:
            rate = f"{info['images_per_s']:.1f} images/s"
        else:
            rate = "n/a"
        out.append(dict(
            device=info.get("device_name", info["device"]), date=date,
            case=f"{info['op']} {info['case']}", impl=info["impl"], mode=info["mode"],
            dtype=info["dtype"], instances=info.get("instances") or "n/a",
            median=_seconds(median), rounds=b["stats"].get("rounds"), rate=rate,
            peak=_bytes(peak), speedup=_ratio(speedup), memory=_ratio(mem_ratio, approx),
            _sort=(info["device"], info["dtype"], info["op"], info.get("instances") or 0,
                   info["case"], MODE_ORDER.get(info["mode"], 9),
                   IMPL_ORDER.get(info["impl"], 9)),
        ))
    out.sort(key=lambda r: r["_sort"])
    return out


COLUMNS = [("device", "device"), ("date", "date"), ("case", "case"), ("impl", "impl"),
           ("mode", "mode"), ("dtype", "dtype"), ("instances", "instances (2M)"),
           ("median", "median"), ("rounds", "rounds"), ("rate", "throughput"),
           ("peak", "peak memory"), ("speedup", "speed-up vs eager"),
           ("memory", "memory ratio (eager / impl)")]


def markdown(rows):
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="files written by --benchmark-json")
    args = parser.parse_args(argv)
    for i, path in enumerate(args.json):
        with open(path) as f:
            data = json.load(f)
        machine = data.get("machine_info", {})
        if i:
            print()
        print(f"<!-- {path}: {data.get('datetime', '')}, {machine.get('node', '')}, "
              f"{machine.get('cpu', {}).get('brand_raw', '')} -->")
        print(markdown(rows_of(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
