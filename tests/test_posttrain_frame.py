"""The post-training stages' shared lookups: clear errors that name the setting and the fix."""

from __future__ import annotations

import pytest

from tasks.errors import ForjaInputError
from tasks.posttrain import folder_files, is_stage, local_folder, manifest_at


def test_folder_files_lists_a_folder_sorted_and_names_the_setting_otherwise(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.json").write_text("{}")
    (tmp_path / "a.safetensors").write_bytes(b"\0")
    assert folder_files(str(tmp_path), "rl.rewards[reward_model].path", "a reward model folder") == [
        str(tmp_path / "a.safetensors"),
        str(tmp_path / "b" / "x.json"),
    ]
    with pytest.raises(
        ForjaInputError, match=r"feedback\.adapter .*not a folder; give a peft adapter folder"
    ):
        folder_files(str(tmp_path / "a.safetensors"), "feedback.adapter", "a peft adapter folder")


def test_a_folder_without_manifest_is_not_a_stage(tmp_path):
    assert not is_stage(str(tmp_path))
    with pytest.raises(
        ForjaInputError, match=r"no manifest\.json; dpo\.base must be a finished stage folder"
    ):
        manifest_at(str(tmp_path), "dpo.base")
    assert local_folder(str(tmp_path), tmp_path / "cache") == tmp_path  # local folders are used in place
