"""The operator console in the browser, served under ``/api/console`` (docs/console.md).

``lifecycle.console.app.Console`` answers requests framework-free, as the ingress does; the local host and
``lifecycle.azure_host`` route ``/api/console/...`` to it. Jinja2 is imported only when the console is used.
"""
