"""Pictures for people: the daemon's status page (``/ui/``) and ``cce-monitor report``'s HTML file.

:mod:`monitor.ui.svg` draws timelines and progress bars as SVG text (one renderer for both), :mod:`monitor.ui.report`
writes the self-contained report, :mod:`monitor.ui.page` serves the page and its assets (``static/``: no CDN, no
external fonts). The data the page shows comes from the daemon's API (:mod:`monitor.daemon.api`).
"""
