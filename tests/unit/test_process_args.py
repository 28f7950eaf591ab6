"""Which command a task runs: Docker's entrypoint/cmd rules, as swarmkit applies them."""

from __future__ import annotations

import pytest

from shoal.agent.exec.protocol import ExecError
from shoal.agent.exec.spec import process_args
from shoal.agent.images.model import ImageConfig
from shoal.api.types import ContainerSpec

IMAGE = ImageConfig(entrypoint=["/entry"], cmd=["--default"])
NO_ENTRY = ImageConfig(cmd=["sh"])


@pytest.mark.parametrize("command, args, image, expected", [
    (None, None, IMAGE, ["/entry", "--default"]),            # the image's own
    (None, ["--x"], IMAGE, ["/entry", "--x"]),               # args replace cmd
    (["/other"], None, IMAGE, ["/other"]),                   # a new entrypoint drops the image cmd
    (["/other"], ["a"], IMAGE, ["/other", "a"]),
    (None, [], IMAGE, ["/entry", "--default"]),              # empty args = unset (swarmkit)
    ([], None, NO_ENTRY, ["sh"]),                            # empty command = unset
    (None, ["httpd", "-f"], NO_ENTRY, ["httpd", "-f"]),
])
def test_docker_command_rules(command: list[str] | None, args: list[str] | None, image: ImageConfig,
                              expected: list[str]) -> None:
    assert process_args(ContainerSpec(image="x", command=command, args=args), image) == expected


def test_nothing_to_run_is_a_clear_error() -> None:
    with pytest.raises(ExecError, match="no command specified"):
        process_args(ContainerSpec(image="x", args=[]), ImageConfig())
