"""state.json: written atomically, read back whole; a broken file never keeps the agent from starting."""

from __future__ import annotations

from pathlib import Path

from device_agent.storage import AgentState, OpenSession, StateFile


def test_storage_state_round_trip_and_no_temp_files_left(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    assert state.load() == AgentState()
    record = OpenSession(
        id="6f1c1f2e-8f43-4c47-9d57-1d3f4cf0b0a1",
        badge="04A1B2C3",
        offline=False,
        started="2026-11-22T08:00:00.000Z",
        start_event="0b8e7c0e-2f7b-4f0a-9d43-6a8c8e7b2c11",
        heartbeat="2026-11-22T08:00:30.000Z",
        unlocked_s=30.0,
    )
    state.save(AgentState(session=record))
    assert state.load().session == record
    state.save(AgentState())
    assert state.load().session is None
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_storage_broken_state_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"session": {"id": ')
    assert StateFile(tmp_path / "state.json").load() == AgentState()


def test_storage_state_file_of_an_older_agent_loads_without_until_reason(tmp_path: Path) -> None:
    # Written before `until_reason` existed: the session's until then means max_duration.
    (tmp_path / "state.json").write_text(
        '{"session": {"id": "6f1c1f2e-8f43-4c47-9d57-1d3f4cf0b0a1", "badge": "04A1B2C3", "offline": false,'
        ' "started": "2026-11-22T08:00:00.000Z", "start_event": "0b8e7c0e-2f7b-4f0a-9d43-6a8c8e7b2c11",'
        ' "until": "2026-11-22T12:00:00.000Z", "heartbeat": "2026-11-22T08:00:30.000Z"}}'
    )
    session = StateFile(tmp_path / "state.json").load().session
    assert session is not None and session.until == "2026-11-22T12:00:00.000Z"
    assert session.until_reason is None
