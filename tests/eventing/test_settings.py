"""Settings: defaults, parsing, one error listing every bad variable, the README's table."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventing.errors import ConfigError
from eventing.settings import VARIABLES, Settings, markdown_table, unknown_variables


def test_defaults_match_kyma_where_kyma_has_a_name() -> None:
    settings = Settings.from_environ({})
    assert settings.nats.urls == ("nats://127.0.0.1:4222",)
    assert settings.events.type_prefix == "sap.kyma.custom"
    assert settings.stream.name == "sap"
    assert settings.stream.retention == "interest"
    assert settings.stream.discard == "new"
    assert settings.stream.storage == "file"
    assert settings.proxy.port == 8080
    assert settings.proxy.request_timeout == 5.0
    assert settings.proxy.max_request_size == 65536
    assert settings.stream.duplicate_window == 120.0


@pytest.mark.parametrize(
    ("raw", "seconds"), [("5s", 5.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("1.5", 1.5)]
)
def test_durations(raw: str, seconds: float) -> None:
    assert Settings.from_environ({"REQUEST_TIMEOUT": raw}).proxy.request_timeout == seconds


@pytest.mark.parametrize(
    ("raw", "size"),
    [("65536", 65536), ("64Ki", 65536), ("700Mi", 700 * 2**20), ("1G", 10**9), ("-1", -1)],
)
def test_sizes(raw: str, size: int) -> None:
    assert Settings.from_environ({"JS_STREAM_MAX_BYTES": raw}).stream.max_bytes == size


def test_every_bad_variable_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ(
            {
                "INGRESS_PORT": "eighty",
                "REQUEST_TIMEOUT": "soon",
                "JS_STREAM_STORAGE_TYPE": "tape",
                "NATS_URL": "localhost",
                "MAX_REQUEST_SIZE": "0",
            }
        )
    problems = caught.value.problems
    assert set(problems) == {
        "INGRESS_PORT",
        "REQUEST_TIMEOUT",
        "JS_STREAM_STORAGE_TYPE",
        "NATS_URL",
        "MAX_REQUEST_SIZE",
    }
    assert "got 'eighty'" in problems["INGRESS_PORT"]
    assert "file, memory" in problems["JS_STREAM_STORAGE_TYPE"]
    assert "INGRESS_PORT" in str(caught.value) and "NATS_URL" in str(caught.value)


@pytest.mark.parametrize("prefix", ["kyma", "kyma.custom", "sap..custom", "sap kyma", ""])
def test_prefixes_that_would_misroute_events_are_refused(prefix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ({"EVENT_TYPE_PREFIX": prefix})
    assert list(caught.value.problems) == ["EVENT_TYPE_PREFIX"]


@pytest.mark.parametrize(
    "prefix", ["_INBOX.>", "_INBOX.*", "_INBOX_*", "_INBOX.", ".x", "a..b", "my inbox", ""]
)
def test_an_inbox_prefix_with_wildcards_or_empty_tokens_is_refused(prefix: str) -> None:
    """A wildcard would make replies land on subjects the user's permissions do not name."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ({"NATS_INBOX_PREFIX": prefix})
    assert list(caught.value.problems) == ["NATS_INBOX_PREFIX"]
    assert "without wildcards" in caught.value.problems["NATS_INBOX_PREFIX"]


@pytest.mark.parametrize("prefix", ["_INBOX", "_INBOX_manager", "replies.manager-1"])
def test_an_inbox_prefix_is_a_subject_of_one_or_more_tokens(prefix: str) -> None:
    assert Settings.from_environ({"NATS_INBOX_PREFIX": prefix}).nats.inbox_prefix == prefix


def test_duplicate_window_must_fit_in_max_age() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ({"JS_STREAM_MAX_AGE": "1m", "JS_STREAM_DUPLICATE_WINDOW": "2m"})
    assert list(caught.value.problems) == ["JS_STREAM_DUPLICATE_WINDOW"]


def test_several_nats_urls() -> None:
    settings = Settings.from_environ({"NATS_URL": "nats://a:4222, nats://b:4222"})
    assert settings.nats.urls == ("nats://a:4222", "nats://b:4222")


def test_readme_lists_every_variable_as_generated() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert markdown_table() in readme, "regenerate the table: python -m eventing.settings"


def test_a_misspelled_setting_is_named_with_the_closest_declared_one() -> None:
    warnings = unknown_variables(
        {"DELIVERY_RETRIES": "3", "NATS_URLS": "nats://x:1", "EVENTING_TYPO": "1", "HOME": "/"}
    )
    assert warnings == [
        "DELIVERY_RETRIES is not a setting and is ignored (did you mean DELIVERY_RETRY?)",
        "EVENTING_TYPO is not a setting and is ignored (see the README's table of settings)",
        "NATS_URLS is not a setting and is ignored (did you mean NATS_URL?)",
    ]


def test_settings_procfile_ports_and_kubernetes_service_links_are_no_typos() -> None:
    environ = {
        **{variable.name: variable.default for variable in VARIABLES},
        "NATS_PORT": "4222",
        "EVENTING_DATA_DIR": ".data",
        "EVENTING_NATS_SERVICE_HOST": "10.0.0.7",
        "EVENTING_NATS_SERVICE_PORT_CLIENT": "4222",
        "EVENTING_NATS_PORT": "tcp://10.0.0.7:4222",
        "EVENTING_NATS_PORT_4222_TCP_ADDR": "10.0.0.7",
    }
    assert unknown_variables(environ) == []
    assert unknown_variables({"WORKER_METRICS_PROT": "9191"}) == [
        "WORKER_METRICS_PROT is not a setting and is ignored (did you mean WORKER_METRICS_PORT?)"
    ]


def test_a_bad_url_is_reported_without_its_password() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_environ({"NATS_URL": "http://app:s3cret@nats:4222", "BROKER_URL": "x://t@y"})
    assert "s3cret" not in str(raised.value) and "http://app:***@nats:4222" in str(raised.value)
    assert "x://***@y" in str(raised.value)


def test_each_declaration_is_the_fields_default_and_reading() -> None:
    assert Settings() == Settings.from_environ({})
    assert len({variable.name for variable in VARIABLES}) == len(VARIABLES)


def test_dead_letters_wait_for_their_own_timeout_not_the_proxys() -> None:
    settings = Settings.from_environ({"REQUEST_TIMEOUT": "1s", "JS_DLQ_PUBLISH_TIMEOUT": "7s"})
    assert settings.proxy.request_timeout == 1.0
    assert settings.stream.dead_letter_publish_timeout == 7.0
    assert Settings.from_environ({"REQUEST_TIMEOUT": "1s"}).stream.dead_letter_publish_timeout == 5


def test_the_worker_metrics_address_is_a_setting() -> None:
    settings = Settings.from_environ({"WORKER_METRICS_HOST": "0.0.0.0"})
    assert settings.workers.metrics_host == "0.0.0.0"
    assert unknown_variables({"WORKER_METRICS_HOST": "0.0.0.0"}) == []
    with pytest.raises(ConfigError) as raised:
        Settings.from_environ({"WORKER_METRICS_HOST": " "})
    assert list(raised.value.problems) == ["WORKER_METRICS_HOST"]


@pytest.fixture
def secret(tmp_path: Path) -> str:
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    return str(path)


@pytest.mark.parametrize(
    ("environ", "first", "others"),
    [
        (
            {"NATS_CREDS_FILE": "{f}", "NATS_TOKEN_FILE": "{f}"},
            "NATS_CREDS_FILE",
            "NATS_TOKEN_FILE",
        ),
        (
            {"NATS_NKEY_SEED_FILE": "{f}", "NATS_USER": "app", "NATS_PASSWORD_FILE": "{f}"},
            "NATS_NKEY_SEED_FILE",
            "NATS_USER",
        ),
        (
            {"NATS_TOKEN_FILE": "{f}", "NATS_URL": "nats://app:pw@nats:4222"},
            "NATS_TOKEN_FILE",
            "NATS_URL",
        ),
    ],
)
def test_two_ways_of_authenticating_to_nats_are_refused_at_start(
    secret: str, environ: dict[str, str], first: str, others: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_environ({name: value.format(f=secret) for name, value in environ.items()})
    assert raised.value.problems[first] == (
        f"conflicts with {others}: set one way of authenticating to NATS"
    )
    assert "pw" not in str(raised.value)


def test_nats_settings_that_go_in_pairs_are_refused_alone(secret: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_environ({"NATS_PASSWORD_FILE": secret, "NATS_TLS_CERT_FILE": secret})
    assert set(raised.value.problems) == {"NATS_USER", "NATS_TLS_CERT_FILE"}


def test_an_unreadable_secret_file_is_named_at_start(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError) as raised:
        Settings.from_environ({"NATS_TOKEN_FILE": missing, "BROKER_PASSWORD_FILE": missing})
    assert raised.value.problems == {
        "NATS_TOKEN_FILE": f"cannot read the file {missing!r}",
        "BROKER_PASSWORD_FILE": f"cannot read the file {missing!r}",
    }


def test_broker_credentials_and_tls_settings_that_contradict_the_url_are_refused(
    secret: str,
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_environ(
            {
                "BROKER_URL": "redis://app:pw@redis:6379/0",
                "BROKER_PASSWORD_FILE": secret,
                "BROKER_TLS_CA_FILE": secret,
            }
        )
    assert raised.value.problems == {
        "BROKER_PASSWORD_FILE": "conflicts with the password in BROKER_URL: keep only the user"
        " in the URL",
        "BROKER_TLS_CA_FILE": "needs a TLS BROKER_URL (rediss:// or amqps://)",
    }
    settings = Settings.from_environ(
        {
            "BROKER_URL": "rediss://app@redis:6379/0",
            "BROKER_PASSWORD_FILE": secret,
            "BROKER_TLS_CA_FILE": secret,
        }
    )
    assert settings.delivery.broker_password_file == secret


def test_a_misspelled_broker_setting_is_named() -> None:
    assert unknown_variables({"BROKER_PASWORD_FILE": "x"}) == [
        "BROKER_PASWORD_FILE is not a setting and is ignored (did you mean BROKER_PASSWORD_FILE?)"
    ]
