"""Self-contained HTML pages: run traces (`run --html`) and bench reports (`bench --html`).

The only package importing the plotting library (matplotlib, rendering SVG inline), and
imported only when a page is asked for, so `specli --help` never loads it.
"""
