"""Leader election: a lease in Redis with a strictly increasing term (the fencing token).

Several controllers run side by side; the one holding the lease leads. Keys (one hash tag,
so they live in one Redis Cluster slot and one script can use them together):

- ``nfsteer:{leader}:term``  — INCR'd by every new claim: it never goes down.
- ``nfsteer:{leader}:lease`` — ``"ID TERM"``, with a TTL of the lease length.
- ``nfsteer:{leader}:id:ID`` — held by each running controller (TTL-renewed), so a second
  controller with the same ``--id`` is refused instead of sharing its lease.
- ``nfsteer:{leader}:api:ID`` — the controller's REST API URL, for redirects to the leader.

A claim and a renewal are one script (:data:`ACQUIRE_LUA`): when no lease exists, the term
is incremented and the lease set to the claimant; when the claimant holds it with the same
term, it is extended; otherwise the current holder and term are returned. The leader renews
every lease / 4. It counts itself leader only until the time it *sent* its last granted
renewal plus the lease length (:class:`Lease`), so a paused or partitioned leader stops
before another can win the next term. The term is the OpenFlow role generation id and is
checked by the save script of the pool state: a stale leader can change neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract import keys

TAG = f"{keys.PREFIX}:{{leader}}"
TERM_KEY = f"{TAG}:term"
LEASE_KEY = f"{TAG}:lease"
DEFAULT_LEASE_MS = 3000
RENEWALS_PER_LEASE = 4  # renewals per lease length: three may fail before it ends
MIN_LEASE_MS = 300


def id_key(controller_id: str) -> str:
    return f"{TAG}:id:{controller_id}"


def api_key(controller_id: str) -> str:
    return f"{TAG}:api:{controller_id}"


# KEYS: lease, term   ARGV: id, lease ms, the term the claimant holds (0: none), floor
# Returns {granted (0/1), term, holder}. The floor is the highest term the claimant has seen
# elsewhere (a switch's generation id, a pool's fence): a term counter that went back (a
# store that lost it) is raised above it, and a lease held at or below it is claimed anew.
ACQUIRE_LUA = """
local floor = tonumber(ARGV[4]) or 0
local cur = redis.call('GET', KEYS[1])
if cur then
  local sp = string.find(cur, ' ', 1, true)
  local holder = sp and string.sub(cur, 1, sp - 1) or ''
  local term = sp and tonumber(string.sub(cur, sp + 1)) or 0
  if holder == ARGV[1] and term == tonumber(ARGV[3]) and term > floor then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, term, holder}
  end
  if term ~= nil and holder ~= '' and holder ~= ARGV[1] then
    return {0, term, holder}
  end
end
local known = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if known < floor then redis.call('SET', KEYS[2], floor) end
local term = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. term, 'PX', ARGV[2])
return {1, term, ARGV[1]}
"""

# KEYS: lease   ARGV: id, term — a leader that stops hands over at once.
RELEASE_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] .. ' ' .. ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


@dataclass
class Lease:
    """What this controller knows about the lease. Pure: times are arguments
    (``time.monotonic()``)."""

    controller_id: str
    lease_s: float
    term: int = 0  # the highest term seen (ours when leading)
    holder: str | None = None
    valid_until: float = 0.0  # we lead until then (monotonic), if holder is us
    floor: int = 0  # the highest term seen outside Redis: ours must go above it

    def raise_floor(self, term: int) -> None:
        self.floor = max(self.floor, term)

    def granted(self, term: int, asked_at: float) -> bool:
        """A claim or renewal sent at ``asked_at`` was granted. Returns True when this
        makes us the leader of a new term."""
        new = self.holder != self.controller_id or term != self.term
        self.term, self.holder = term, self.controller_id
        self.valid_until = asked_at + self.lease_s
        return new

    def refused(self, term: int, holder: str) -> bool:
        """Someone else holds the lease. Returns True when we led until now."""
        was = self.leading_as_of_holder()
        self.term = max(self.term, term)
        self.holder = holder
        self.valid_until = 0.0
        return was

    def lost(self) -> bool:
        """We can no longer tell (Redis unreachable, a fencing refusal): step down."""
        was = self.leading_as_of_holder()
        if was:
            self.holder = None
        self.valid_until = 0.0
        return was

    def leading_as_of_holder(self) -> bool:
        return self.holder == self.controller_id

    def leading(self, now: float) -> bool:
        return self.holder == self.controller_id and now < self.valid_until


def check_lease(lease_ms: int, renew_ms: int | None = None) -> str | None:
    """Why a lease configuration is refused, or None."""
    renew = renew_ms if renew_ms is not None else lease_ms // RENEWALS_PER_LEASE
    if lease_ms < MIN_LEASE_MS:
        return f"the lease must be at least {MIN_LEASE_MS} ms, not {lease_ms}"
    if renew < 1 or lease_ms <= 3 * renew:
        return (
            f"the lease ({lease_ms} ms) must be more than 3x the renewal interval "
            f"({renew} ms): a leader must be able to miss renewals before it ends"
        )
    return None
