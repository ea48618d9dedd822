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


def test_codes_are_unique_and_snake_case() -> None:
    codes = [cls.code for cls in all_error_classes()]
    assert len(codes) == len(set(codes))
    assert all(code.replace("_", "").isalpha() and code.islower() for code in codes)


@pytest.mark.parametrize("cls", all_error_classes())
def test_round_trip_through_data_keeps_type_code_and_message(cls: type[TfstreamError]) -> None:
    original = cls("something precise")
    rebuilt = TfstreamError.from_dict(original.to_dict())
    assert type(rebuilt) is cls
    assert rebuilt.code == original.code
    assert rebuilt.message == "something precise"
    assert 400 <= rebuilt.http_status < 600


def test_unknown_code_from_a_newer_peer_is_kept() -> None:
    rebuilt = TfstreamError.from_dict({"code": "quota_exceeded", "message": "slow down"})
    assert isinstance(rebuilt, TfstreamError)
    assert rebuilt.code == "quota_exceeded"
    assert rebuilt.message == "slow down"
    assert TfstreamError.code == "internal_error"  # the class attribute is untouched


def test_client_errors_are_the_request_s_fault() -> None:
    assert errors.InvalidImage.client_error and not errors.InvalidImage.retriable
    assert errors.ModelLoadFailed.retriable and not errors.ModelLoadFailed.client_error
    assert errors.ImageTooLarge.http_status == 413
    assert errors.ModelNotFound.http_status == 404
