"""The service token of tests that serve an adapter: one `env:` reference, the same on the
adapter's side and the router's (child processes inherit the variable)."""

from __future__ import annotations

import os
from typing import Final

from adapters.config import AdapterServiceSettings, SecretRef
from adapters.hop_auth import SERVICE_TOKEN_KEY, ServerSecurity

SERVICE_TOKEN: Final = "tests-service-token-0123456789"
TOKEN_ENV: Final = "IMESH_TESTS_SERVICE_TOKEN"
# For raw stub calls to a served adapter.
TOKEN_METADATA: Final = ((SERVICE_TOKEN_KEY, SERVICE_TOKEN),)


def service_token() -> SecretRef:
    """A reference to the tests' service token; sets the variable it names."""
    os.environ[TOKEN_ENV] = SERVICE_TOKEN
    return SecretRef.model_validate(f"env:{TOKEN_ENV}")


def adapter_security() -> ServerSecurity:
    """A plaintext adapter service that requires the tests' service token."""
    return ServerSecurity.for_adapter(AdapterServiceSettings(tokens=[service_token()]))
