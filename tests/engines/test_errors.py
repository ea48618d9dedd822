import pytest

from engines import errors
from engines.errors import TfstreamError


def all_error_classes() -> list[type[TfstreamError]]:
    found = [TfstreamError]
    stack = [TfstreamError]
    while stack:
        for sub in stack.pop().__subclasses__():
            found.append(sub)
            stack.append(sub)
    return found


def code_class(cls: type[TfstreamError]) -> type[TfstreamError]:
    """The class that names `cls`'s code: itself, or the parent a variant keeps it from."""
    return next(c for c in cls.__mro__ if "code" in c.__dict__)


def test_codes_are_unique_and_snake_case() -> None:
    codes = [cls.code for cls in all_error_classes() if code_class(cls) is cls]
    assert len(codes) == len(set(codes))
    assert all(code.replace("_", "").isalpha() and code.islower() for code in codes)


@pytest.mark.parametrize("cls", all_error_classes())
def test_round_trip_through_data_keeps_type_code_and_message(cls: type[TfstreamError]) -> None:
    """A variant that keeps its parent's code crosses the wire as that parent."""
    original = cls("something precise")
    rebuilt = TfstreamError.from_dict(original.to_dict())
    assert type(rebuilt) is code_class(cls)
    assert rebuilt.code == original.code
    assert rebuilt.message == "something precise"
    assert 400 <= rebuilt.http_status < 600


def test_unknown_code_from_a_newer_peer_is_kept() -> None:
    rebuilt = TfstreamError.from_dict({"code": "quota_exceeded", "message": "slow down"})
    assert isinstance(rebuilt, TfstreamError)
    assert rebuilt.code == "quota_exceeded"
    assert rebuilt.message == "slow down"
    assert TfstreamError.code == "internal_error"  # the class attribute is untouched


def test_an_untrusted_broker_is_unavailable_but_not_worth_waiting_for() -> None:
    untrusted = errors.UntrustedBroker("certificate not trusted")
    assert isinstance(untrusted, errors.ServiceUnavailable)
    assert untrusted.code == "service_unavailable" and not untrusted.retriable
    assert errors.ServiceUnavailable.retriable


def test_client_errors_are_the_request_s_fault() -> None:
    assert errors.InvalidImage.client_error and not errors.InvalidImage.retriable
    assert errors.ModelLoadFailed.retriable and not errors.ModelLoadFailed.client_error
    assert errors.ImageTooLarge.http_status == 413
    assert errors.ModelNotFound.http_status == 404
