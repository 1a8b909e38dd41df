"""The dataset health report as text (``lora-studio dataset check`` without --json, and the GUI)."""

from __future__ import annotations

from typing import Any


def listing(names: list[str], shown: int = 10) -> str:
    return ", ".join(names[:shown]) + more(names, shown)


def more(items: list, shown: int) -> str:
    return f" and {len(items) - shown} more" if len(items) > shown else ""


def size(s: dict) -> str:
    scaled = f", upscaled {s['upscale']:.2f}x" if s["upscale"] > 1.0 + 1e-6 else ""
    return f"{s['size'][0]}x{s['size'][1]}, {s['area_share']:.1%} of the area{scaled}"


def clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _folder_text(f: dict, r: dict[str, Any]) -> list[str]:
    """One folder's section; its files named by their name in the folder."""
    prefix = f["name"] + "/"

    def short(name: str) -> str:
        return name[len(prefix):] if name.startswith(prefix) else name

    def listed(names: list[str]) -> str:
        return listing([short(n) for n in names])

    lines = ["", f"[{f['name']}]" + (" (regularisation)" if f["is_reg"] else "") + f"  repeats {f['repeats']}"
             + (f", trigger '{f['trigger']}'" if f["trigger"] else "")]
    held = f", {f['held_out']} held out for validation" if f["held_out"] else ""
    bad = f" (+{f['unreadable']} unreadable)" if f["unreadable"] else ""
    batch = r["datasets"][f["dataset"]]["batch_size"]
    lines.append(f"  images: {f['images']}{bad}{held}; {f['images'] - f['held_out']} x {f['repeats']} repeats = "
                 f"{f['samples_per_epoch']} samples per epoch ({f['steps_alone']} steps at batch size {batch} if "
                 "it were alone)")
    if f["held_out_files"]:
        lines.append(f"  held out for validation: {listed(f['held_out_files'])}")
    if f["buckets"]:
        lines.append("  buckets: " + ", ".join(f"{b} x{n}" for b, n in f["buckets"].items()))
    up, crop = f["upscaled"], f["heavily_cropped"]
    lines.append(f"  upscaled to their bucket: {len(up)}"
                 + (" (" + listing([f"{short(u['file'])} {u['factor']:.2f}x" for u in up], 6) + ")" if up else "")
                 + f"; cropped more than {r['thresholds']['heavy_crop_share']:.0%}: {len(crop)}"
                 + (" (" + listing([f"{short(x['file'])} {x['cut']:.1%}" for x in crop], 6) + ")" if crop else ""))
    if f["small"]:
        lines.append("  smaller than the resolution: "
                     + listing([f"{short(s['file'])} ({size(s)})" for s in f["small"]], 6))
    c = f["captions"]
    longest = c["longest"]
    lines.append(f"  captions: {c['captioned']} captioned, {len(c['missing'])} missing, {len(c['empty'])} empty, "
                 f"{len(c['overlong'])} over {r['max_token_length']} tokens"
                 + (f"; longest {short(longest['file'])}, {longest['tokens']} tokens" if longest else ""))
    for key, label in (("missing", "missing"), ("empty", "empty"), ("without_trigger", "without the trigger")):
        if c[key]:
            lines.append(f"    {label}: {listed(c[key])}")
    if c["overlong"]:
        lines.append("    overlong: " + listing([f"{short(o['file'])} ({o['tokens']})" for o in c["overlong"]]))
    if c["top_tags"]:
        lines.append("  top tags: " + ", ".join(f"{t} {n}" for t, n in c["top_tags"]))
    files = f["files"]
    for label, names in (("alpha channel", [a["file"] for a in files["alpha"]]),
                         ("16-bit", [h["file"] for h in files["high_bit_depth"]]), ("CMYK", files["cmyk"]),
                         ("EXIF-rotated", [e["file"] for e in files["exif_rotated"]]),
                         ("greyscale", files["greyscale"])):
        if names:
            lines.append(f"  {label}: {listed(names)}")
    if files["unreadable"]:
        lines.append("  unreadable: " + listing([f"{short(u['file'])} ({u['error']})" for u in files["unreadable"]]))
    return lines


def render_text(r: dict[str, Any]) -> str:
    """The readable report: one section per folder, the datasets' totals, the findings, the verdict."""
    lines = [f"Dataset check: {r['source'] or r['root']}"]
    for d, ds in enumerate(r["datasets"]):
        res = "x".join(str(v) for v in ds["resolution"])
        buckets = (f"buckets {ds['min_bucket_reso']}-{ds['max_bucket_reso']} step {ds['bucket_reso_steps']}"
                   + (", no upscale" if ds["bucket_no_upscale"] else "")) if ds["enable_bucket"] else "buckets off"
        label = f"dataset {d + 1}: " if len(r["datasets"]) > 1 else ""
        lines.append(f"  {label}resolution {res}, batch size {ds['batch_size']}, {buckets}, "
                     f"max_token_length {r['max_token_length']}")
    for f in r["folders"]:
        lines += _folder_text(f, r)
    lines.append("")
    for d, ds in enumerate(r["datasets"]):
        label = f"Dataset {d + 1}" if len(r["datasets"]) > 1 else "Dataset"
        reg = f" + {ds['reg_samples']} regularisation" if ds["reg_samples"] else ""
        about = "" if ds["exact"] else "about "
        lines.append(f"{label}: {ds['training_images']} training images, {ds['training_samples']} samples{reg} per "
                     f"epoch -> {about}{ds['batches_per_epoch']} batches of up to {ds['batch_size']} (a batch holds "
                     "one bucket: the sum over buckets of ceil(samples in the bucket / batch size))")
        if ds["buckets"]:
            lines.append("  buckets (samples): " + ", ".join(f"{b} x{n}" for b, n in ds["buckets"].items()))
    ga = r["gradient_accumulation_steps"]
    lines.append(f"Steps per epoch: {r['steps_per_epoch']}"
                 + (f" ({r['batches_per_epoch']} batches / gradient_accumulation_steps {ga})" if ga > 1 else ""))
    for level, title in (("problem", "Problems"), ("warning", "Warnings"), ("note", "Notes")):
        found = [i for i in r["issues"] if i["level"] == level]
        if found:
            lines += ["", f"{title} ({len(found)}):"] + [f"  - {i['message']}" for i in found]
    lines += ["", f"Verdict: {r['verdict']}"]
    lines += [f"  * {a}" for a in r["advice"]]
    return "\n".join(lines)
