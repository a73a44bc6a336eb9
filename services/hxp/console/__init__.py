"""The operator's web console, served by the gateway under /console.

Sign-in with the master key for a session cookie (:mod:`hxp.console.sessions`, checked by the
boundary for every route whose access is ``console``); pages for the overview (models, engines,
recent traffic, stores), API keys, usage (charts, table, CSV) and the configuration; the JSON they
read (:mod:`hxp.console.routes`). Plain HTML, one script and one style sheet served from
``static/`` (no CDN, no third-party front-end code); charts are SVG drawn by that script.
"""
