"""What the specs' helper HTTP servers share (python3 standard library only):
bind 127.0.0.1 on a free port, print "<port> <pid>" once listening (the
readiness signal), stop on SIGTERM and when the parent process dies, so a
crashed spec run leaves no server behind."""
import ctypes
import os
import signal
import sys
import threading
import time
from http.server import ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients that time out or cancel close their end: not worth a traceback.
        pass


def die_with_parent():
    """Asks the kernel for SIGTERM when the parent dies; falls back to polling."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError("prctl")
    except Exception:
        def watch():
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(0)
        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def serve(handler, before=None):
    """Runs the server for handler until killed; before() runs first."""
    die_with_parent()
    if before:
        before()
    server = Server(("127.0.0.1", 0), handler)
    sys.stdout.write("%d %d\n" % (server.server_address[1], os.getpid()))
    sys.stdout.flush()
    server.serve_forever()
