"""Kernel config fragments, offline: what they ask for, how they merge, and what olddefconfig dropped."""

from __future__ import annotations

import pytest

from mk.rules.kernel_build import build_timestamp
from mk.rules.kernel_config import FragmentError, Request, dropped, effective, merged, parse_config, parse_fragment

NET = """\
# Networking, for sshd.
CONFIG_NET=y
CONFIG_INET=y

# CONFIG_IPV6 is not set
CONFIG_VIRTIO_NET=m
CONFIG_CMDLINE="console=ttyS0 quiet"
CONFIG_WIRELESS=n
"""

RESOLVED = """\
#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.1.192 Kernel Configuration
#
CONFIG_64BIT=y
CONFIG_NET=y
CONFIG_INET=y
# CONFIG_IPV6 is not set
CONFIG_VIRTIO_NET=y
CONFIG_CMDLINE="console=ttyS0 quiet"
CONFIG_FAILOVER=y
"""


def test_a_fragment_gives_each_option_with_its_file_and_line() -> None:
    requests = parse_fragment(NET, "k/net.config")
    assert [(r.option, r.value, r.line) for r in requests] == [
        ("CONFIG_NET", "y", 2), ("CONFIG_INET", "y", 3), ("CONFIG_IPV6", None, 5), ("CONFIG_VIRTIO_NET", "m", 6),
        ("CONFIG_CMDLINE", '"console=ttyS0 quiet"', 7), ("CONFIG_WIRELESS", None, 8),
    ]
    assert {r.file for r in requests} == {"k/net.config"}
    assert [r.shown() for r in requests[2:4]] == ["# CONFIG_IPV6 is not set", "CONFIG_VIRTIO_NET=m"]


@pytest.mark.parametrize("line", ["NET=y", "CONFIG_NET y", "CONFIG-NET=y", "  set CONFIG_NET=y"])
def test_a_line_that_is_no_option_names_its_file_and_line(line: str) -> None:
    with pytest.raises(FragmentError) as error:
        parse_fragment(f"CONFIG_A=y\n\n{line}\n", "k/bad.config")
    assert str(error.value) == (f"k/bad.config:3: '{line.strip()}' is not a config line (`CONFIG_X=value`, "
                                "`# CONFIG_X is not set` or a comment)")


def test_the_last_request_for_an_option_counts_from_where_it_is() -> None:
    first = parse_fragment("CONFIG_A=y\nCONFIG_B=y\n", "one.config")
    second = parse_fragment("# CONFIG_A is not set\nCONFIG_C=m\n", "two.config")
    assert [(r.option, r.value, r.file) for r in effective(first + second)] == [
        ("CONFIG_B", "y", "one.config"), ("CONFIG_A", None, "two.config"), ("CONFIG_C", "m", "two.config")]


def test_the_merged_fragment_holds_only_what_counts_in_one_order() -> None:
    text = merged(parse_fragment(NET, "net.config"))
    assert text == ('CONFIG_CMDLINE="console=ttyS0 quiet"\nCONFIG_INET=y\n# CONFIG_IPV6 is not set\nCONFIG_NET=y\n'
                    'CONFIG_VIRTIO_NET=m\n# CONFIG_WIRELESS is not set\n')
    # Comments, blank lines, a repeated request and the order of the lines change nothing the kernel sees.
    edited = "# Edited.\n" + "\n".join(reversed(NET.splitlines())) + "\nCONFIG_NET=y\n"
    assert merged(parse_fragment(edited, "net.config")) == text
    assert merged(parse_fragment(NET.replace("CONFIG_INET=y", "CONFIG_INET=m"), "net.config")) != text


def test_a_resolved_config_reads_as_options_set_and_unset() -> None:
    assert parse_config(RESOLVED) == {
        "CONFIG_64BIT": "y", "CONFIG_NET": "y", "CONFIG_INET": "y", "CONFIG_IPV6": None, "CONFIG_VIRTIO_NET": "y",
        "CONFIG_CMDLINE": '"console=ttyS0 quiet"', "CONFIG_FAILOVER": "y"}


def test_what_the_resolved_config_honours_is_not_reported() -> None:
    requests = parse_fragment(NET.replace("CONFIG_VIRTIO_NET=m", "CONFIG_VIRTIO_NET=y"), "net.config")
    # CONFIG_WIRELESS is asked off and is absent: an option Kconfig leaves out is off.
    assert dropped(requests, parse_config(RESOLVED)) == []


def test_each_dropped_option_is_reported_with_what_the_config_has_instead() -> None:
    fragment = ("CONFIG_NET=y\nCONFIG_NO_SUCH_OPTION=y\nCONFIG_VIRTIO_NET=m\n# CONFIG_FAILOVER is not set\n"
                "CONFIG_IPV6=y\n")
    lost = dropped(parse_fragment(fragment, "k/net.config"), parse_config(RESOLVED))
    assert [(r.shown(), r.file, r.line, why) for r, why in lost] == [
        ("CONFIG_NO_SUCH_OPTION=y", "k/net.config", 2, "it is not in the resolved config: this kernel has no such "
                                                       "option, or an option it depends on is off"),
        ("CONFIG_VIRTIO_NET=m", "k/net.config", 3, "the resolved config has 'CONFIG_VIRTIO_NET=y' (a dependency, a "
                                                   "select or a range allows no other value)"),
        ("# CONFIG_FAILOVER is not set", "k/net.config", 4, "the resolved config has 'CONFIG_FAILOVER=y' (another "
                                                            "option selects it)"),
        ("CONFIG_IPV6=y", "k/net.config", 5, "the resolved config has '# CONFIG_IPV6 is not set' (an option it "
                                             "depends on is off)"),
    ]


def test_only_the_request_that_counts_is_checked() -> None:
    requests = [Request("CONFIG_IPV6", "y", "a.config", 1), Request("CONFIG_IPV6", None, "b.config", 7)]
    assert dropped(requests, parse_config(RESOLVED)) == []
    assert [(r.file, r.line) for r, _ in dropped(requests[::-1], parse_config(RESOLVED))] == [("a.config", 1)]


def test_the_build_timestamp_is_the_epoch_as_date_prints_it() -> None:
    assert build_timestamp(0) == "Thu Jan  1 00:00:00 UTC 1970"
    assert build_timestamp(1700000000) == "Tue Nov 14 22:13:20 UTC 2023"
