from tests.plugins.world import READONLY, World


def test_first_fetch_refreshes_then_fast_path(world: World) -> None:
    first = world.token()
    assert first.status_code == 200, first.json
    body = first.json
    assert body["token_type"] == "Bearer"
    assert READONLY in body["scopes"]
    second = world.token()
    assert second.json["access_token"] == body["access_token"]
    assert world.emulator.calls()["token"]["refresh_token"] == 1
