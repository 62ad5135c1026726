"""server/core/secrets.py: passwords masked in every form a catalogue URL takes, and in errors quoting one."""

from __future__ import annotations

import logging
import traceback

import pytest

from towerserve.server.core.secrets import redact

SECRET = "s3cr3t-Pw"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # userinfo
        ("postgresql://u:s3cr3t-Pw@db.internal:5432/app", "postgresql://u:***@db.internal:5432/app"),
        ("postgres://u:s3cr3t-Pw@h/db", "postgres://u:***@h/db"),
        ("postgresql://:s3cr3t-Pw@h/db", "postgresql://:***@h/db"),  # no user name
        ("postgresql://u:s3cr3t@Pw@h/db", "postgresql://u:***@h/db"),  # a raw "@" in the password
        # password= query parameter, anywhere in the query, any case
        ("postgresql://u@h/db?password=s3cr3t-Pw", "postgresql://u@h/db?password=***"),
        (
            "postgresql://u@h/db?sslmode=require&password=s3cr3t-Pw&connect_timeout=5",
            "postgresql://u@h/db?sslmode=require&password=***&connect_timeout=5",
        ),
        ("postgresql://u@h/db?PASSWORD=s3cr3t-Pw", "postgresql://u@h/db?PASSWORD=***"),
        ("postgresql://u@h/db?sslpassword=s3cr3t-Pw", "postgresql://u@h/db?sslpassword=***"),
        # both at once
        ("postgresql://u:s3cr3t-Pw@h/db?password=s3cr3t-Pw", "postgresql://u:***@h/db?password=***"),
        # libpq key=value conninfo: bare, spaced and quoted (spaces and escaped quotes inside)
        ("host=h port=5432 password=s3cr3t-Pw dbname=app", "host=h port=5432 password=*** dbname=app"),
        ("host=h password = s3cr3t-Pw dbname=app", "host=h password = *** dbname=app"),
        ("host=h password='s3cr 3t \\' Pw' dbname=app", "host=h password=*** dbname=app"),
        # in a sentence, twice
        (
            "cannot reach postgresql://u:s3cr3t-Pw@h/db; tried host=h password=s3cr3t-Pw",
            "cannot reach postgresql://u:***@h/db; tried host=h password=***",
        ),
        # nothing to hide: unchanged
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
        ("http://h:8080/metrics", "http://h:8080/metrics"),
        ("sqlite:////var/lib/towerserve/catalog.sqlite", "sqlite:////var/lib/towerserve/catalog.sqlite"),
        ("postgresql://u@h/db?password=", "postgresql://u@h/db?password="),  # an empty one
    ],
)
def test_every_url_form_is_masked(text, want):
    assert redact(text) == want


def test_a_source_masks_its_passwords_wherever_the_text_quotes_them():
    """libpq quotes what it could not parse with nothing around it to recognise, percent-encoded or not."""
    url = "postgresql://u:s3cr%3At@h/db"
    assert redact('invalid percent-encoded token: "s3cr%3At"', url) == 'invalid percent-encoded token: "***"'
    assert redact("password authentication failed: s3cr:t", url) == "password authentication failed: ***"
    conninfo = "host=h password='two words'"
    assert redact('missing "=" after "two words"', conninfo) == 'missing "=" after "***"'
    assert redact("no secret here", "postgresql://u@h/db") == "no secret here"


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:s3cr%zzet@127.0.0.1:1/db", "postgresql://u@127.0.0.1:1/db?password=s3cr%zzet"],
    ids=["userinfo", "query"],
)
def test_a_url_libpq_cannot_parse_is_refused_without_its_password(url, caplog):
    """A bad % escape made libpq quote the password, in an uncaught traceback and the pool's log."""
    pytest.importorskip("psycopg")
    from towerserve.server.catalog.journal import open_store

    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValueError) as err:
        open_store(url=url)
    message = str(err.value)
    assert "s3cr" not in message and "invalid percent-encoded token" in message, message
    # What an uncaught error prints, chained errors included: the original libpq error must not show.
    printed = "".join(traceback.format_exception(err.value))
    assert "s3cr" not in printed, printed
    assert "s3cr" not in caplog.text


def test_a_non_postgres_url_is_refused_without_echoing_it():
    from towerserve.server.catalog.journal import open_store

    for url in ("host=h password=s3cr3t-Pw", "mysql://u:s3cr3t-Pw@h/db"):
        with pytest.raises(ValueError, match="must be a postgresql:// URL") as err:
            open_store(url=url)
        assert SECRET.split("-")[0] not in str(err.value), str(err.value)
