"""StatusCache.get_or_build: requests that miss one key together share one build."""

from __future__ import annotations

import asyncio

from exportd.api.status_cache import StatusCache

KEY = ("p", "t", 'W/"a"', "http://x")


def test_concurrent_misses_share_one_build() -> None:
    cache, calls = StatusCache(), []

    async def build() -> tuple[tuple[str, ...], bytes, dict[str, str]]:
        calls.append(1)
        await asyncio.sleep(0.05)  # the others arrive while it builds
        return KEY, b"body", {"X-Task-Version": "3"}

    async def main() -> list[tuple[tuple[str, ...], bytes, dict[str, str]]]:
        return await asyncio.gather(*(cache.get_or_build(KEY, build) for _ in range(20)))

    results = asyncio.run(main())
    assert calls == [1]
    assert all(r == (KEY, b"body", {"X-Task-Version": "3"}) for r in results)
    kept = cache.get(KEY)
    assert kept is not None and kept.content == b"body"


def test_a_failed_build_fails_its_waiters_and_is_not_kept() -> None:
    cache, calls = StatusCache(), []

    async def build() -> tuple[tuple[str, ...], bytes, dict[str, str]]:
        calls.append(1)
        await asyncio.sleep(0.05)
        raise RuntimeError("store down")

    async def main() -> list[object]:
        return await asyncio.gather(
            *(cache.get_or_build(KEY, build) for _ in range(5)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert calls == [1] and all(isinstance(r, RuntimeError) for r in results)
    assert cache.get(KEY) is None

    async def again() -> tuple[tuple[str, ...], bytes, dict[str, str]]:
        return KEY, b"new", {}

    async def retry() -> tuple[tuple[str, ...], bytes, dict[str, str]]:
        return await cache.get_or_build(KEY, again)

    assert asyncio.run(retry())[1] == b"new"  # the next miss builds again


def test_a_body_built_for_a_moved_tag_is_kept_under_its_own_key() -> None:
    cache = StatusCache()
    moved = ("p", "t", 'W/"b"', "http://x")

    async def build() -> tuple[tuple[str, ...], bytes, dict[str, str]]:
        return moved, b"later", {}

    got = asyncio.run(cache.get_or_build(KEY, build))
    assert got[0] == moved and cache.get(moved) is not None and cache.get(KEY) is None


def test_while_its_successor_is_built_an_older_body_of_the_same_tag_is_answered() -> None:
    cache, calls = StatusCache(max_age=0.01), []
    cache.put(KEY, b"older", {})

    async def build() -> tuple[tuple[str, ...], bytes, dict[str, str]]:
        calls.append(1)
        await asyncio.sleep(0.1)
        return KEY, b"newer", {}

    async def main() -> list[bytes]:
        await asyncio.sleep(0.02)  # the kept body is now past its age
        assert cache.get(KEY) is None and cache.while_building(KEY) is None  # no build yet
        builder = asyncio.ensure_future(cache.get_or_build(KEY, build))
        await asyncio.sleep(0.01)  # the build is under way
        assert cache.while_building(KEY) is not None
        others = await asyncio.gather(*(cache.get_or_build(KEY, build) for _ in range(10)))
        return [(await builder)[1]] + [o[1] for o in others]

    got = asyncio.run(main())
    assert calls == [1]
    assert got[0] == b"newer" and got[1:] == [b"older"] * 10  # none of the others waited
    assert cache.while_building(KEY) is None  # the build is over
    kept = cache.get(KEY)
    assert kept is not None and kept.content == b"newer"


def test_with_nothing_kept_for_the_tag_the_others_wait_for_the_build() -> None:
    cache, calls = StatusCache(), []
    cache.put(("p", "t", 'W/"old"', "http://x"), b"another tag", {})

    async def build() -> tuple[tuple[str, ...], bytes, dict[str, str]]:
        calls.append(1)
        await asyncio.sleep(0.05)
        return KEY, b"body", {}

    async def main() -> list[bytes]:
        return [
            r[1] for r in await asyncio.gather(*(cache.get_or_build(KEY, build) for _ in range(5)))
        ]

    assert asyncio.run(main()) == [b"body"] * 5 and calls == [1]  # never another tag's body
