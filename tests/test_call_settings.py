"""The [asterisk] and [agent] tables (shared/settings.py declarations) and what reload does with them."""
from __future__ import annotations

import pytest

from audiogw.shared.config import ConfigError, load_config
from audiogw.shared.settings import Reload
from audiogw.supervisor.reload_plan import plan_reload

ACCOUNT = "AC" + "0123456789abcdef" * 2


def load(tmp_path, text: str):
    path = tmp_path / "audiogw.toml"
    path.write_text(text)
    return load_config(path)


def test_defaults_mean_no_ami_and_no_rest(tmp_path):
    config = load(tmp_path, "")
    assert config.asterisk.manager is None and config.asterisk.username == "audiogw"
    assert config.asterisk.secret_file is None
    assert config.agent.account_sid == "" and config.agent.auth_token is None


def test_a_full_configuration(tmp_path):
    config = load(tmp_path, f'[asterisk]\nmanager = "[::1]:5038"\nusername = "gw"\nsecret_file = "ami.secret"\n'
                            f'[agent]\naccount_sid = "{ACCOUNT}"\nauth_token = "0123456789abcdef"\n')
    assert config.asterisk.manager == ("::1", 5038)
    assert config.asterisk.secret_file == str(tmp_path / "ami.secret")  # next to the config file
    assert config.agent.account_sid == ACCOUNT and config.agent.auth_token == "0123456789abcdef"


@pytest.mark.parametrize("text, key, reason", [
    ('[asterisk]\nmanager = "127.0.0.1:5038"\n', "asterisk.secret_file", "required with asterisk.manager"),
    ('[asterisk]\nmanager = "127.0.0.1"\nsecret_file = "s"\n', "asterisk.manager", "has no port"),
    ('[asterisk]\nusername = "bad user"\n', "asterisk.username", "is not a manager.conf user name"),
    ('[asterisk]\nusername = "x"\nsecret = "inline"\n', "asterisk.secret", "unknown key 'secret'"),
    ('[agent]\naccount_sid = "ACnothex"\n', "agent.account_sid", "AC followed by 32 hex digits"),
    (f'[agent]\naccount_sid = "{ACCOUNT}"\nauth_token = "short"\n', "agent.auth_token", "at least 16 characters"),
    ('[agent]\nauth_token = "0123456789abcdef"\n', "agent.auth_token", "needs agent.account_sid"),
    (f'[agent]\naccount_sid = "{ACCOUNT}"\nauth_token = "0123456789abcdef\\nX: y"\n', "agent.auth_token", "one line"),
])
def test_refused_with_the_key_and_why(tmp_path, text, key, reason):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert info.value.key == key and reason in info.value.reason, info.value


def test_reload_applies_the_token_at_once_and_the_manager_at_the_next_start(tmp_path):
    old = load(tmp_path, f'[agent]\naccount_sid = "{ACCOUNT}"\nauth_token = "0123456789abcdef"\n')
    new = load(tmp_path, f'[asterisk]\nmanager = "127.0.0.1:5038"\nsecret_file = "s"\n'
                         f'[agent]\naccount_sid = "{ACCOUNT}"\nauth_token = "fedcba9876543210"\n')
    plan = plan_reload(old, new, {})
    assert [change.key for change in plan.live] == ["agent.auth_token"]
    assert {change.key for change in plan.restart} == {"asterisk.manager", "asterisk.secret_file"}
    assert plan.config.agent.auth_token == "fedcba9876543210" and plan.config.asterisk.manager is None
    assert all(change.setting.reload is Reload.RESTART for change in plan.restart)
