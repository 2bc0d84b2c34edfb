"""What the Celery agent retries and what stops it: a missing package is a setup error."""

from __future__ import annotations

from sluice.integrations.celery.agent import missing_package


def raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise exc from inner
    except BaseException as outer:
        return outer


def test_a_missing_module_names_the_package_to_install():
    message = missing_package(ModuleNotFoundError("No module named 'packaging'", name="packaging"))
    assert message is not None
    assert "the Python package 'packaging' is not installed" in message
    assert "pip install packaging" in message and "requirements-celery.txt" in message
    # A submodule names its distribution's top level; pip names that differ are mapped.
    sub = missing_package(ModuleNotFoundError("No module named 'yaml.x'", name="yaml.x"))
    assert sub is not None and "pip install PyYAML" in sub


def test_kombus_own_import_error_names_the_package_from_its_hint():
    message = missing_package(ImportError("Missing redis library (pip install redis)"))
    assert message is not None and "pip install redis" in message


def test_an_import_error_under_another_error_is_still_found():
    wrapped = raised_from(RuntimeError("transport failed"), ModuleNotFoundError(name="amqp"))
    message = missing_package(wrapped)
    assert message is not None and "'amqp'" in message


def test_network_and_broker_errors_are_not_missing_packages():
    for exc in (
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        OSError("Network is unreachable"),
        RuntimeError("broker gone"),
        raised_from(ConnectionError("lost"), OSError("reset")),
    ):
        assert missing_package(exc) is None, exc
    assert missing_package(None) is None
