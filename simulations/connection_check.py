"""Is a SuperLink there, and is it the one our CA vouches for? Checked before ``submit``, ``register-node`` and
``node`` hand the address to Flower, whose own messages cannot tell a closed port from a certificate that does not
match (and whose SuperNode retries either without end)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from client.launch import check_certificate_file
from server.launch import check_address

PROBE_TIMEOUT_S = 5.0


class Unreachable(ConnectionError):
    """Nothing answers at the address (a SuperLink that is not up yet may still come)."""


class WrongServer(ConnectionError):
    """Something answers, but not a SuperLink this CA vouches for: waiting will not help."""


def probe(address: str, root_certificates: Path | None, flag: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Return when something listens at ``address`` (``flag`` names it in messages) and, with
    ``root_certificates``, completes a TLS handshake with a certificate that CA signed for the host dialled;
    Unreachable (nothing there, or it hung up or stalled mid-handshake: a proxy whose SuperLink is not up yet) or
    WrongServer (a certificate the CA does not vouch for, or a peer that speaks no TLS), each saying which.
    ValueError for a ``root_certificates`` file that is not a PEM certificate."""
    host, port = check_address(address, flag)
    context = None
    if root_certificates is not None:
        check_certificate_file(root_certificates, "--root-certificates")
        context = ssl.create_default_context(cafile=str(root_certificates))
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        raise Unreachable(f"nothing listens at {address} ({flag}): connection refused") from None
    except TimeoutError:
        raise Unreachable(f"{address} ({flag}) did not answer within {timeout_s:.0f} s") from None
    except OSError as exc:
        raise Unreachable(f"cannot reach {address} ({flag}): {exc.strerror or exc}") from None
    with sock:
        if context is None:
            return
        try:
            context.wrap_socket(sock, server_hostname=host).close()
        except ssl.SSLCertVerificationError as exc:
            raise WrongServer(f"the server at {address} ({flag}) presents a certificate that {root_certificates} "
                              f"does not vouch for ({exc.verify_message}): wrong CA file, or another server") from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, TimeoutError) as exc:
            raise Unreachable(f"{address} ({flag}) hung up during the TLS handshake "
                              f"({type(exc).__name__}): not ready yet?") from None
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or exc
            raise WrongServer(f"TLS with {address} ({flag}) failed ({reason}): is it a SuperLink started with TLS "
                              "(fedsqueeze coordinator --certs), and the port the right one?") from None
