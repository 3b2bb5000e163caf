"""`gkit-probe`: a health or readiness check with no dependency beyond the standard library
(it runs every few seconds in containers). Sends GKIT_API_KEY when set.

  gkit-probe /health                  -> http://127.0.0.1:$GKIT_PORT/health
  gkit-probe --url URL --expect TEXT  -> also require TEXT in the body
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    url = expect = None
    path = "/health"
    while args:
        arg = args.pop(0)
        if arg == "--url" and args:
            url = args.pop(0)
        elif arg == "--expect" and args:
            expect = args.pop(0)
        else:
            path = arg
    url = url or f"http://127.0.0.1:{os.environ.get('GKIT_PORT', '8000')}{path}"
    request = urllib.request.Request(url)
    if os.environ.get("GKIT_API_KEY"):
        request.add_header("Authorization", f"Bearer {os.environ['GKIT_API_KEY']}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read().decode(errors="replace")
    except OSError as e:
        print(f"gkit-probe: {url}: {e}", file=sys.stderr)
        return 1
    if expect and expect not in body:
        print(f"gkit-probe: {url} answered without '{expect}'", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
