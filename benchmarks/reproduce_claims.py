"""The paper's claims that ``reproduce_small.py`` decides from its table, each by the table's means.

verdict: 'supported' / 'not supported' by the means; 'within noise' when a metric difference is
smaller than the larger of the two sample stds (n=1 rows have none; the other row's is used). A
claim whose rows the table does not hold (``--rows``) is left out.
"""
from __future__ import annotations

QUALITY = (("acc", 1, "accuracy"), ("nll", -1, "NLL"), ("ece", -1, "ECE"), ("brier", -1, "Brier"),
           ("ood_auroc", 1, "OoD AUROC"), ("corrupted_acc", 1, "corrupted accuracy"))
EDST7 = "EDST ensemble (M=7, density 0.1)"


def fmt_cell(row: dict, col: str) -> str:
    v, sd = row[col], row[col + "_std"]
    if v is None:
        return "-"
    if col == "params":
        return f"{v:,.0f}"
    if col == "flops_rel":
        return f"{v:.2f}x"
    digits = {"acc": 2, "corrupted_acc": 2, "nll": 4, "ece": 4, "brier": 4, "ood_auroc": 4, "disagreement": 4,
              "kl": 4}[col]
    return f"{v:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def noise(a: dict, b: dict, col: str) -> float | None:
    sds = [x[col + "_std"] for x in (a, b) if x.get(col + "_std") is not None]
    return max(sds) if sds else None


def claims(table: list[dict]) -> list[dict]:
    """The verdicts of every claim whose rows are in the table (rows keyed by their 'method')."""
    t = {r["method"]: r for r in table}
    out = []

    def claim(text: str, ok: bool, evidence: str, diffs: list[tuple[float, float | None]] = ()) -> None:
        close = any(sd is not None and abs(diff) < sd for diff, sd in diffs)
        verdict = "within noise" if close else ("supported" if ok else "not supported")
        out.append({"claim": text, "verdict": verdict, "supported": bool(ok) and not close, "evidence": evidence})

    def beats(a: dict, b: dict, name_a: str, name_b: str, short_a: str, short_b: str, cols=QUALITY) -> None:
        for col, sign, name in cols:
            if a.get(col) is None or b.get(col) is None:
                continue
            diff = sign * (a[col] - b[col])
            claim(f"{name_a} beats {name_b} in {name}", diff > 0,
                  f"{short_a} {fmt_cell(a, col)} vs {short_b} {fmt_cell(b, col)}", [(diff, noise(a, b, col))])

    def more_diverse(a: dict, b: dict, name_a: str, name_b: str) -> None:
        claim(f"{name_a} tickets are more diverse than {name_b} tickets (disagreement and KL)",
              a["disagreement"] > b["disagreement"] and a["kl"] > b["kl"],
              f"{name_a} disagreement {fmt_cell(a, 'disagreement')}, KL {fmt_cell(a, 'kl')} vs {name_b} "
              f"{fmt_cell(b, 'disagreement')}, {fmt_cell(b, 'kl')}",
              [(a[c] - b[c], noise(a, b, c)) for c in ("disagreement", "kl")])

    def cheaper_than_dense(e: dict, d: dict, name: str, short: str) -> None:
        claim(f"{name} has fewer training FLOPs than one dense model", e["flops_rel"] < 1,
              f"{short} {e['flops_rel']:.2f}x vs dense 1.00x")
        claim(f"{name} has fewer parameters than one dense model", e["params"] < d["params"],
              f"{short} {e['params']:,.0f} vs dense {d['params']:,.0f}")
        beats(e, d, name, "the single dense model", short, "dense")

    e, d, deep, dst, pf, st = (t.get(m) for m in ("EDST", "dense", "deep", "DST", "PF", "static"))
    if e and d:
        cheaper_than_dense(e, d, "EDST ensemble", "EDST")
    if deep and dst:
        gap = deep["acc"] - dst["acc"]
        claim("DST ensemble approaches the dense deep ensemble (accuracy within 0.5 points) at a fraction of its "
              "training FLOPs", gap <= 0.5 and dst["flops_rel"] < deep["flops_rel"],
              f"DST {fmt_cell(dst, 'acc')} % at {dst['flops_rel']:.2f}x vs deep ensemble {fmt_cell(deep, 'acc')} % "
              f"at {deep['flops_rel']:.2f}x (gap {gap:.2f} points)", [(gap - 0.5, noise(deep, dst, "acc"))])
    if dst and e:
        more_diverse(dst, e, "DST", "EDST")
    for name, row in (("DST", dst), ("EDST", e)):
        if row and pf:
            more_diverse(row, pf, name, "PF")
    if dst and st:
        beats(dst, st, "DST ensemble", "the static sparse ensemble", "DST", "static", QUALITY[:2])
    e7 = t.get("EDST7-d0.1")
    if e7 and d:  # the paper's second operating point
        cheaper_than_dense(e7, d, EDST7, "EDST M=7")
    if e7 and e:
        claim(f"{EDST7} has fewer training FLOPs than the EDST ensemble (M=3, density 0.2)",
              e7["flops_rel"] < e["flops_rel"], f"EDST M=7 {e7['flops_rel']:.2f}x vs EDST M=3 {e['flops_rel']:.2f}x")
        beats(e7, e, EDST7, "the EDST ensemble (M=3, density 0.2)", "EDST M=7", "EDST M=3")
    dst1, st1 = t.get("DST-d0.1"), t.get("static-d0.1")
    if dst1 and st1:
        beats(dst1, st1, "DST ensemble at density 0.1", "the static sparse ensemble at density 0.1", "DST", "static",
              QUALITY[:2])
    if e7 and dst1:
        more_diverse(dst1, e7, "DST (density 0.1)", "EDST (M=7, density 0.1)")
    if "EDST-stop" in t and e:  # not a claim of the paper: this code's option (the reference's decision 6)
        stop = t["EDST-stop"]
        for col, sign, name in QUALITY[:3]:
            diff = sign * (stop[col] - e[col])
            claim(f"(option, not the paper) EDST with no topology updates at the end of each phase beats plain EDST "
                  f"in {name}", diff > 0, f"{fmt_cell(stop, col)} vs {fmt_cell(e, col)}", [(diff, noise(stop, e, col))])
    return out
