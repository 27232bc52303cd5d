"""State behind the /__test/ control endpoints (no auth, not counted).

  GET  /__test/stats                  {"requests": N, "by_method": {...}}
  POST /__test/reset                  zero the counters, drop locks and
                                      pending failures, thaw, restore quota
  POST /__test/lock?path=P            PUT/DELETE/MOVE/COPY onto P answer 423
  POST /__test/unlock?path=P
  POST /__test/quota?bytes=N          N < 0 or absent: unlimited
  POST /__test/freeze                 DAV requests wait until thawed
  POST /__test/thaw
  POST /__test/fail?status=S&count=N[&method=M]
                                      the next N DAV requests (of method M
                                      only, if given) answer status S;
                                      S = 0 closes the connection unanswered

P is a path under the user's files root ("a/b.txt", leading slash optional).
"""

import threading


def norm_path(path: str) -> str:
    return "/".join(p for p in path.split("/") if p)


class Control:
    def __init__(self, quota):
        self.mutex = threading.Lock()
        self.default_quota = quota
        self.quota = quota
        self.requests = 0
        self.by_method: dict[str, int] = {}
        self.locked: set[str] = set()
        self.thawed = threading.Event()
        self.thawed.set()
        self.fail_status = None
        self.fail_count = 0
        self.fail_method = None

    def count(self, method: str) -> None:
        with self.mutex:
            self.requests += 1
            self.by_method[method] = self.by_method.get(method, 0) + 1

    def stats(self) -> dict:
        with self.mutex:
            return {"requests": self.requests, "by_method": dict(self.by_method)}

    def reset(self) -> None:
        with self.mutex:
            self.requests = 0
            self.by_method = {}
            self.locked.clear()
            self.fail_status, self.fail_count, self.fail_method = None, 0, None
            self.quota = self.default_quota
        self.thawed.set()

    def set_failure(self, status: int, count: int, method) -> None:
        with self.mutex:
            self.fail_status, self.fail_count = status, count
            self.fail_method = method.upper() if method else None

    def take_failure(self, method: str):
        """The status to fail this request with, if one is pending."""
        with self.mutex:
            if self.fail_count <= 0:
                return None
            if self.fail_method and self.fail_method != method:
                return None
            self.fail_count -= 1
            return self.fail_status

    def lock(self, path: str) -> None:
        with self.mutex:
            self.locked.add(norm_path(path))

    def unlock(self, path: str) -> None:
        with self.mutex:
            self.locked.discard(norm_path(path))

    def is_locked(self, path: str) -> bool:
        with self.mutex:
            return norm_path(path) in self.locked

    def set_quota(self, value) -> None:
        with self.mutex:
            self.quota = value if value is not None and value >= 0 else None

    def get_quota(self):
        with self.mutex:
            return self.quota
