#!/usr/bin/env python3
"""Client helpers of bench/run (Python 3 standard library only).

  sessions.py sessions   --base URL --users N --per-user M --concurrency C --password P --tag T
      Registers N users, signs each in M times (N*M live sessions) and makes one GET /app/
      with every session cookie. Prints one `sessions ...` summary line; exits 1 if any
      step got an unexpected status.

  sessions.py revocation --a URL --b URL --email E --password P --rounds R
      R times: sign in through gateway A, use the cookie on gateway B (200), sign out through
      A, then poll B with the cookie as fast as possible until it answers 401. Prints one
      line per round and a `revocation ...` summary line with the milliseconds from A's
      logout answer to B's first 401.

Requests carry no Accept header, so unauthenticated answers are 401 JSON, not redirects.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

COOKIE = "authgate_session"


class Client:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, base):
        url = urllib.parse.urlsplit(base)
        if url.scheme != "http" or not url.hostname or not url.port:
            raise SystemExit(f"sessions.py: expected http://host:port, got {base!r}")
        self.host, self.port = url.hostname, url.port
        self.conn = None

    def request(self, method, path, body=None, cookie=None, content_type=None):
        headers = {}
        if cookie is not None:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        if body is not None:
            body = json.dumps(body).encode()
            headers["Content-Type"] = content_type or "application/json"
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, response.headers, data
            except (http.client.HTTPException, ConnectionError, OSError):
                # A kept-alive connection the server closed: one retry on a new one.
                self.close()
                if attempt == 2:
                    raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def session_cookie(headers):
    for value in headers.get_all("Set-Cookie") or []:
        name, _, rest = value.partition("=")
        if name.strip() == COOKIE:
            token = rest.split(";", 1)[0].strip()
            if token:
                return token
    return None


def register(client, email, password):
    status, _, body = client.request("POST", "/auth/register", {"email": email, "password": password})
    if status not in (201, 409):
        raise SystemExit(f"sessions.py: register {email}: {status} {body[:200]!r}")


def login(client, email, password):
    status, headers, body = client.request("POST", "/auth/login", {"email": email, "password": password})
    if status != 200:
        return status, None
    return status, session_cookie(headers)


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, key):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def text(self):
        return " ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "none"


def cmd_sessions(args):
    emails = [f"rss-{args.tag}-{i}@bench.test" for i in range(args.users)]
    setup = Client(args.base)
    for email in emails:
        register(setup, email, args.password)
    setup.close()

    total = args.users * args.per_user
    next_item = iter(range(total))
    item_lock = threading.Lock()
    logins, uses = Tally(), Tally()
    made = [0]

    def worker():
        client = Client(args.base)
        while True:
            with item_lock:
                item = next(next_item, None)
            if item is None:
                break
            # Users in turn, so that one account's sign-ins are spread over the run.
            email = emails[item % args.users]
            status, cookie = login(client, email, args.password)
            logins.add(status if cookie or status != 200 else "200-without-cookie")
            if cookie is None:
                continue
            status, _, _ = client.request("GET", "/app/", cookie=cookie)
            uses.add(status)
            if status == 200:
                with item_lock:
                    made[0] += 1
        client.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    print(
        f"sessions made={made[0]} of={total} users={args.users} seconds={seconds:.1f} "
        f"logins[{logins.text()}] uses[{uses.text()}]"
    )
    return 0 if made[0] == total else 1


def cmd_revocation(args):
    a, b = Client(args.a), Client(args.b)
    register(a, args.email, args.password)
    delays = []
    never = 0
    for round_no in range(1, args.rounds + 1):
        status, cookie = login(a, args.email, args.password)
        if cookie is None:
            raise SystemExit(f"sessions.py: round {round_no}: login through A answered {status}")
        status, _, body = b.request("GET", "/app/", cookie=cookie)
        if status != 200:
            raise SystemExit(f"sessions.py: round {round_no}: fresh session on B answered {status} {body[:200]!r}")
        status, _, body = a.request("POST", "/auth/logout", body={}, cookie=cookie)
        answered = time.perf_counter()
        if status != 204:
            raise SystemExit(f"sessions.py: round {round_no}: logout through A answered {status} {body[:200]!r}")
        polls = 0
        while True:
            status, _, body = b.request("GET", "/app/", cookie=cookie)
            polls += 1
            now = time.perf_counter()
            if status == 401:
                delay = (now - answered) * 1000
                delays.append(delay)
                print(f"  round {round_no:2d}: B answered 401 after {delay:7.2f} ms ({polls} polls)")
                break
            if status != 200:
                raise SystemExit(f"sessions.py: round {round_no}: B answered {status} {body[:200]!r}")
            if now - answered > args.timeout:
                never += 1
                print(f"  round {round_no:2d}: B still answered 200 after {args.timeout:.0f} s ({polls} polls)")
                break
    a.close()
    b.close()
    if delays:
        print(
            f"revocation rounds={args.rounds} median_ms={statistics.median(delays):.2f} "
            f"max_ms={max(delays):.2f} min_ms={min(delays):.2f} never={never}"
        )
    else:
        print(f"revocation rounds={args.rounds} median_ms=nan max_ms=nan min_ms=nan never={never}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sessions", help="make N*M live sessions, each used once")
    p.add_argument("--base", required=True)
    p.add_argument("--users", type=int, default=40)
    p.add_argument("--per-user", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--password", required=True)
    p.add_argument("--tag", default="bench")
    p.set_defaults(run=cmd_sessions)

    p = sub.add_parser("revocation", help="logout on A, time until B answers 401")
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--email", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--timeout", type=float, default=5.0, help="give up on a round after this many seconds")
    p.set_defaults(run=cmd_revocation)

    args = parser.parse_args()
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
