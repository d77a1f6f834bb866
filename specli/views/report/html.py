"""Self-contained HTML: a generation's trace and a bench report. Inline CSS, JS and SVG;
nothing is fetched, so a page opens offline (and from an email attachment)."""

from __future__ import annotations

import html
import json
from itertools import accumulate

from specli.views.report import charts

CSS = """
body{font:14px/1.5 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#212529;padding:0 1em}
h1{font-size:1.2em}h2{font-size:1.05em;margin-top:1.6em}
#text{white-space:pre-wrap;font-family:ui-monospace,monospace;background:#f8f9fa;padding:1em;border-radius:6px}
.tok{cursor:pointer}.tok:hover,.rej:hover{outline:1px solid #495057}
.acc-model{color:#2b8a3e}.acc-ngram{color:#1098ad;text-decoration:underline}
.rej,.lg-rej{color:#c92a2a;text-decoration:line-through}.rej{cursor:pointer}
.rb{border-left:1px solid #ced4da;margin-left:1px}
.sel{background:#fff3bf}
#detail{position:sticky;top:0;background:#fff;border:1px solid #dee2e6;border-radius:6px;padding:.6em 1em;min-height:3em;font-size:13px}
#detail table td{padding:0 .8em 0 0}
.charts{display:flex;flex-wrap:wrap;gap:1em}.charts figure{margin:0}
.charts svg{max-width:100%;height:auto}
table.stats td:first-child{font-weight:bold;padding-right:1em}
.legend span{margin-right:1.2em}
pre{background:#f8f9fa;padding:.8em;overflow-x:auto;font-size:12px}
"""

JS = """
const data = JSON.parse(document.getElementById('data').textContent);
const panel = document.getElementById('detail');
const esc = s => String(s).replace(/[&<>]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));
const num = x => (x === null || x === undefined) ? '-' : (+x).toFixed(4);
const alts = (name, xs) => xs && xs.length ? '<b>' + name + '</b> ' +
  xs.map(a => esc(JSON.stringify(a[1])) + ' ' + num(a[2])).join(' · ') : '';
let selected = null;
function show(el) {
  const d = data[el.dataset.k][+el.dataset.i];
  if (selected) selected.classList.remove('sel');
  selected = el; el.classList.add('sel');
  const rows = [['token', esc(JSON.stringify(d.text))], ['what', esc(d.kind)],
    ['round', d.round + ' · drafter ' + esc(d.drafter)], ['p(x)', num(d.p)], ['q(x)', num(d.q)],
    ['min(1, p/q)', num(d.accept)], ['u drawn', num(d.u)]];
  if (d.drawn_prob !== undefined) rows.push(['drawn from', esc(d.source) + ' (prob ' + num(d.drawn_prob) + ')']);
  panel.innerHTML = '<table>' + rows.map(r => '<tr><td>' + r[0] + '</td><td>' + r[1] + '</td></tr>').join('') +
    '</table><div>' + alts('top p:', d.p_top) + '</div><div>' + alts('top q:', d.q_top) + '</div>' +
    (d.drawn_top ? '<div>' + alts('drawn from, top:', d.drawn_top) + '</div>' : '');
}
document.querySelectorAll('.tok,.rej').forEach(el => {
  el.addEventListener('mouseenter', () => show(el));
  el.addEventListener('click', () => show(el));
});
"""

KIND = {"model": "accepted draft (model)", "ngram": "accepted draft (n-gram)"}


def _page(title: str, body: str, script: str = "") -> str:
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}"
            + (f"<script>{script}</script>" if script else "") + "</body></html>")


def _table(rows) -> str:
    return "<table class='stats'>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>"


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


# --------------------------------------------------------------------------- run trace


def _round_tokens(rnd) -> tuple[list[dict], dict | None]:
    """Detail of each kept token of a round, and of its rejected draft (None if none)."""
    t = rnd.trace
    n_acc = min(rnd.n_accepted, len(rnd.pieces))
    base = {"round": rnd.index, "drafter": rnd.drafter}
    out = []
    for j, piece in enumerate(rnd.pieces):
        if j < n_acc and t is not None:
            pos = t.positions[j]
            out.append({**base, "text": piece, "kind": KIND.get(rnd.drafter, "accepted draft"),
                        "p": pos.p_x, "q": pos.q_x, "accept": pos.accept, "u": pos.u,
                        "p_top": pos.p_top, "q_top": pos.q_top})
        elif t is not None:
            kind = "bonus token (all drafts accepted)" if rnd.bonus and rnd.draft_tokens else (
                "the target's correction" if rnd.draft_tokens else "the target's own token")
            out.append({**base, "text": piece, "kind": kind, "p": t.token_p, "q": None,
                        "accept": None, "u": None, "p_top": t.p_top, "q_top": [],
                        "source": t.source, "drawn_prob": t.token_prob, "drawn_top": t.drawn_top})
        else:
            out.append({**base, "text": piece, "kind": "token"})
    rej = None
    if rnd.rejected and t is not None and rnd.n_accepted < len(t.positions):
        pos = t.positions[rnd.n_accepted]
        rej = {**base, "text": rnd.rejected, "kind": "rejected draft", "p": pos.p_x, "q": pos.q_x,
               "accept": pos.accept, "u": pos.u, "p_top": pos.p_top, "q_top": pos.q_top}
    return out, rej


def _text_html(rounds, tail: str) -> tuple[str, dict]:
    """The coloured text (one .tok span per generated token) and the detail data.

    Per round, as in the live view: accepted drafts, the rejected draft struck through,
    then the target's own token."""
    toks, rejs, parts = [], [], []
    for rnd in rounds:
        kept, rej = _round_tokens(rnd)
        n_acc = min(rnd.n_accepted, len(rnd.pieces))
        parts.append("<span class='rb' title='round %d'></span>" % rnd.index)
        for j, d in enumerate(kept):
            if j == n_acc and rej is not None:
                parts.append(_rej_span(rej, len(rejs)))
                rejs.append(rej)
                rej = None
            cls = f"tok acc-{rnd.drafter}" if j < n_acc else "tok"
            parts.append(f"<span class='{cls}' data-k='t' data-i='{len(toks)}'>"
                         f"{html.escape(d['text'])}</span>")
            toks.append(d)
        if rej is not None:  # the round's own token was cut (a stop): the rejection still shows
            parts.append(_rej_span(rej, len(rejs)))
            rejs.append(rej)
    if tail:
        parts.append(f"<span class='tail'>{html.escape(tail)}</span>")
    return "".join(parts), {"t": toks, "r": rejs}


def _rej_span(rej: dict, i: int) -> str:
    text = rej["text"].replace("\n", "↵")
    return f"<span class='rej' data-k='r' data-i='{i}'>{html.escape(text)}</span>"


def trace_page(rounds, done, title: str, stats_rows, config: dict | None = None) -> str:
    """The generation as a page: coloured tokens with details, charts, and the stats panel.

    `rounds` are the engine's Round events (with traces), `done` its Done event,
    `stats_rows` the (label, value) rows of the terminal's stats panel.
    """
    text, data = _text_html(rounds, done.text[sum(len(r.text) for r in rounds):])
    secs = list(accumulate(r.t_draft + r.t_verify + r.t_sample for r in rounds))
    made = list(accumulate(len(r.tokens) for r in rounds))
    figs = ""
    if rounds:
        figs = (_figure(charts.rounds_chart([r.k for r in rounds], [len(r.draft_tokens) for r in rounds],
                                            [r.n_accepted for r in rounds]),
                        "K, drafted and accepted per round")
                + _figure(charts.rate_chart(secs, made),
                          "tok/s so far against decode time (draft + verify + sampling)"))
    legend = ("<p class='legend'><span class='acc-model'>accepted draft (model)</span>"
              "<span class='acc-ngram'>accepted draft (n-gram)</span><span>target's own token</span>"
              "<span class='lg-rej'>rejected draft</span><span>| round boundary</span></p>")
    conf = f"<pre>{html.escape(json.dumps(config, indent=1))}</pre>" if config else ""
    body = (f"<h1>{html.escape(title)}</h1>{legend}"
            "<div id='detail'>hover or click a token for p(x), q(x), min(1, p/q), the uniform drawn "
            "and the top alternatives</div>"
            f"<div id='text'>{text}</div><h2>Rounds</h2><div class='charts'>{figs}</div>"
            f"<h2>Stats</h2>{_table(stats_rows)}{conf}"
            f"<script type='application/json' id='data'>{_json(data)}</script>")
    return _page(title, body, JS)


def _json(data) -> str:
    """JSON safe inside a <script> element: no '</' can close it early."""
    return json.dumps(data, ensure_ascii=False).replace("</", "<\\/")


# --------------------------------------------------------------------------- bench report


def _series(variants, key) -> dict[str, tuple[list, list]]:
    """{drafter: (K values, figures)} over the fixed-K rows that have the figure."""
    out: dict[str, tuple[list, list]] = {}
    for v in variants:
        val = key(v)
        if v.get("runs") and isinstance(v["k"], int) and v["k"] > 0 and val is not None:
            xs, ys = out.setdefault(v["drafter"], ([], []))
            xs.append(v["k"])
            ys.append(val)
    return out


def bench_charts(summary: dict) -> list[str]:
    """The bench report's figures, each an SVG with its caption."""
    vs = summary.get("variants", [])
    base = next((v for v in vs if v["k"] == 0 and v.get("runs")), None)
    figs = []
    tps = _series(vs, lambda v: v["tokens_per_s"]["median"])
    if tps:
        hline = (base["tokens_per_s"]["median"], "K 0 (target alone)") if base else None
        figs.append(_figure(charts.lines_chart(tps, "K", "tok/s (median)", hline),
                            "tok/s by K per drafter, with the baseline"))
    sp = {f"measured ({d})": s for d, s in
          _series(vs, lambda v: (v.get("speedup") or {}).get("median")).items()}
    for key, name in (("predicted_speedup", "pred"), ("predicted_speedup_catchup", "pred+"),
                      ("replayed_speedup", "replay")):
        for d, s in _series(vs, lambda v, key=key: v.get(key)).items():
            sp[f"{name} ({d})"] = s
    if sp:
        styles = {n: {"linestyle": "--"} for n in sp if not n.startswith("measured")}
        figs.append(_figure(charts.lines_chart(sp, "K", "speedup ×", (1.0, "break-even"), styles),
                            "measured against predicted speedup (pred, pred+, replay) by K"))
    cal = summary.get("calibration")
    if cal and cal.get("t_verify"):
        tv = cal["t_verify"]
        curve = {"t_v(n) / t_v(1)": (list(range(1, len(tv) + 1)), [t / tv[0] for t in tv]),
                 "ideal: flat": ([1, len(tv)], [1.0, 1.0])}
        hline = (cal["draft_ratio"], "draft t_d / t_v(1)") if cal.get("draft_ratio") else None
        figs.append(_figure(charts.lines_chart(curve, "tokens verified in one call (n)",
                                               "cost relative to one", hline,
                                               {"ideal: flat": {"linestyle": ":", "marker": ""}}),
                            "does verifying n tokens cost the same as one, here? "
                            "The verify-cost curve, with the draft's cost per token"))
    hists = {f"{v['drafter']} K {v['k']}": v["accepted_hist"] for v in vs
             if v.get("runs") and v["k"] != 0 and v.get("accepted_hist")}
    if hists:
        figs.append(_figure(charts.hist_chart(hists), "acceptance histograms: rounds by drafts accepted"))
    return figs


def bench_page(summary: dict, title: str, report_text: str, recommendation_text: str) -> str:
    """The bench report as a page: the charts, the recommendation and the text report."""
    body = (f"<h1>{html.escape(title)}</h1><h2>Recommendation</h2>"
            f"<pre>{html.escape(recommendation_text)}</pre>"
            f"<h2>Charts</h2><div class='charts'>{''.join(bench_charts(summary))}</div>"
            f"<h2>Report</h2><pre>{html.escape(report_text)}</pre>")
    return _page(title, body)
