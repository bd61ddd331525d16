"""`myocomp profiles`: one entry per built-in profile, with its tool, releases, ids and source."""

from __future__ import annotations

from myocomp.cli import main
from myocomp.imaging.labels import PROFILE_ALIASES, builtin_profiles


def test_profiles_command_lists_every_builtin_with_its_source(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for p in builtin_profiles():
        assert f"{p.name}" in out and p.source in out
    assert "totalsegmentator_mr (also: total_mr): TotalSegmentator 2.5.0+" in out
    assert "musclemap_v1.4 (also: musclemap)" in out


def test_profiles_entries_match_the_profile_tables(capsys):
    assert main(["profiles"]) == 0
    lines = capsys.readouterr().out.splitlines()
    heads = [line for line in lines if not line.startswith("    ")]
    sources = [line.removeprefix("    source: ") for line in lines if line.startswith("    source: ")]
    profiles = builtin_profiles()
    assert len(heads) == len(sources) == len(profiles) == len(lines) / 2
    for head, source, p in zip(heads, sources, profiles, strict=True):
        assert head.startswith(p.name) and source == p.source
        assert head.endswith(f": {p.tool} {p.versions}; ids {min(p.ids)}-{max(p.ids)}, "
                             f"{len(p.ids)} labels, {len(p.muscle_ids())} muscles")
        aliases = sorted(a for a, target in PROFILE_ALIASES.items() if target == p.name)
        assert ("(also: " in head) == bool(aliases)
        assert all(a in head for a in aliases)


def test_profiles_takes_no_arguments(capsys):
    assert main(["profiles", "extra"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: myocomp profiles: ")
