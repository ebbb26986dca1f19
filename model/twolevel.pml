/*
 * twolevel.pml — a Promela model of the two-level acquire of issue 28's
 * per-database bound (docs/budget.md, "Two levels in one table", counted
 * mode): a connection to (node n, database d) holds a slot of the database
 * entry C_db[n,d] (limit Ld, max_shared_pool_size_per_database) AND of the
 * node entry C_node[n] (limit Ln, max_shared_pool_size). Each level is an
 * ordinary entry of the counter table and runs the single-entry protocol,
 * which connthrottle.pml checks; here each level's operations are atomic
 * steps and only their COMPOSITION is checked: the order of the levels, the
 * undo of a database slot when the node refuses or a node wait ends, the
 * release of the two entries in two steps, and a process's death between
 * any two steps, its entries then recovered one at a time.
 * See model/README.md ("twolevel.pml") and model/check.sh (check_twolevel).
 *
 * Sizes: one node, NP processes, each making OPS two-level acquires (each
 * optional or waiting, chosen nondeterministically) and releasing each
 * slot it gets (a process holds at most one slot: a pool never waits while
 * holding, DESIGN.md). Processes 0 and 1 connect to database 0, process 2
 * to database 1, process 3 (NP=4) to database 2. The database bound bites
 * for database 0; the node bound bites when the processes of different
 * databases together want more than Ln slots: with NP=3 that needs Ln=1
 * (with Ln=2 and Ld=1, at most 2 database slots exist, so the node never
 * refuses); with NP=4, Ln=2 bites too and Ln > Ld.
 *
 * Compile-time switches (spin -D...):
 *   (default)        the protocol as being built (below)
 *   NP=n             processes, 3 or 4 (default 3)
 *   LN=n, LD=n       the node's and every database's limit (default 1, 1)
 *   OPS=n            acquires per process (default 2); 0: for ever (for
 *                    the ltl alone: starvation, README)
 *   MAXDEATH=n       processes that may die, SIGKILL, at any step (default 1)
 *   GIVEUP           a queued waiting acquire may give up at any time (its
 *                    deadline, or a cancel); without it every waiting
 *                    acquire must be granted
 *   NODE_USE_CHECK   also assert that no live process holds a node slot
 *                    without its database slot while another is refused or
 *                    queued at the node (docs/budget.md, "Why this order").
 *                    Trivially true of the default order; for
 *                    BUG_NODE_THEN_DB_WAIT (below)
 *   BUG_NO_ROLLBACK  an optional acquire refused by the node keeps its
 *                    database slot (must be refuted)
 *   BUG_NODE_GIVEUP_KEEPS_DB  a waiting acquire that gives up at the node
 *                    keeps its database slot (with GIVEUP; must be refuted)
 *   BUG_RELEASE_DB_NO_WAKE  Slot::Release's database step does not bump
 *                    wake_seq: a database waiter sleeps for ever (must be
 *                    refuted)
 *   BUG_DB_ONLY_CHECKS_NODE  the database level is checked against Ln
 *                    instead of Ld (with LN > LD; must be refuted)
 *   BUG_NODE_THEN_DB_WAIT  a waiting acquire takes its node slot first and
 *                    waits for its database slot while holding it (gives
 *                    the node slot back if the database wait ends). Spin
 *                    finds no violation of the safety properties below nor
 *                    of the ltl with OPS >= 1; NODE_USE_CHECK refutes it,
 *                    and with OPS=0 the ltl finds a starvation that the
 *                    database-first order does not have at NP=3 (README)
 *
 * Per entry (each level): count (cnt), waiters (wt), wake_seq. Single-entry
 * operations, each ONE step here (under the entry lock, or one CAS):
 *   admit-new(L)   grant iff count + waiters < L (waiters first)
 *   queue          waiters++; `seen` was read in an earlier step (the code
 *                  reads wake_seq before the decision that failed)
 *   wake           a queued waiter sleeps until wake_seq != seen; then it
 *                  re-reads seen and, in a later step, takes a slot if
 *                  count < L (woken waiters compete only among themselves),
 *                  else stays queued and sleeps again
 *   give-up        (GIVEUP) waiters--; wake_seq++ if others remain queued
 *   release        count--; wake_seq++ if waiters > 0 (the futex wakes
 *                  one; here any sleeper may look, the others re-check
 *                  harmlessly)
 *   recover        a dead process's hold and queue place at one entry end;
 *                  wake_seq++ (always, as RecoverRecord does)
 *
 * Properties (spin's safety search; the liveness run adds the ltl below):
 *   - strict bound at both levels: `bounded` is asserted at every grant
 *     (count <= its TRUE limit: Ln for the node, Ld for a database, also
 *     when the mutant checks against another), and by the Monitor in every
 *     state. Forced acquires are not modelled (they count above the limit
 *     at both levels: nothing to compose).
 *   - `balanced` (Monitor, every state): each entry's count and waiters are
 *     the sums of the owners' cells and queue places, dead processes'
 *     included until recovered (what RecomputeLocked recomputes).
 *   - conservation, `conserved` (Monitor, whenever quiescent: no live
 *     process inside an acquire or a release, every dead process recovered
 *     at both levels): a live process's cells at both levels are exactly
 *     the Slot it believes it holds (a refused or given-up acquire holds
 *     nothing), nobody is queued, and the node count is the database
 *     counts summed less the owners holding a database slot without its
 *     node slot (audit()'s relation in docs/budget.md). At the end of every
 *     run (all processes finished or dead and recovered) every count and
 *     every waiters is therefore 0.
 *   - no invalid end state: a waiter asleep for ever while nothing will
 *     wake it, a process stuck at any step. A dead process (it has left the
 *     model), the Killer, the Reclaimer and the Monitor are valid ends.
 *   - ltl no_lost_wakeup (pan -a -f, weak fairness, MAXDEATH=0): a live
 *     queued waiter eventually leaves the queue. With OPS >= 1 every run is
 *     finite and this restates the end-state check; with OPS=0 (acquires
 *     for ever) it is a starvation check.
 *
 * Counterexamples: `spin <the same -D flags> -t twolevel.pml | grep MSC`
 * prints one line per step that matters (entry 0 is the node, entry e > 0
 * database e - 1).
 *
 * Abstractions: a level is atomic (the entry lock, FindOrInsert, the hot
 * path's CAS, the cells' stores), except that a waiting acquire's first
 * read of wake_seq is a step of its own before its decision (the code reads
 * it with the entry already locked by FindOrInsert, so no release can come
 * between; the model lets one in: more interleavings, not fewer); wake_seq
 * is a per-process "moved since
 * seen" bit (exact: only equality is asked, no wrap-around); FutexWait's
 * return and the reload of wake_seq are one step, the peek at the word
 * (AcquireWaiting: no room, sleep again) is folded into the locked
 * decision (same outcome); the futex poll timeout is not modelled: the
 * Reclaimer stands for MaybeReclaimDeadOwners (a poll tick, a refusal, or
 * another process's ReclaimDeadOwners) and recovers a dead process's
 * entries whenever it likes, one entry per step, in either order, with
 * everything else interleaved. Limits are constants (no reload wake-up,
 * CounterTable::WakeWaiters). Tables are never full; no reservations,
 * parking, uncounted slots or statistics.
 *
 * MAPPING (model step -> code: the two-level paths as being written in
 * src/core/owner.cc and src/core/owner_ops.cc, on top of the single-entry
 * functions named in connthrottle.pml). Every d_step/atomic is one step.
 *   admit_new           one level of Owner::TryAcquire: the hot path's CAS
 *                       (Word: unlocked, no waiters, Admits(count, 0)) or
 *                       OwnerOps::TryAcquireSlow (Admits(count, waiters)
 *                       under the entry lock, Grant)
 *   try_acquire         Owner::TryAcquire's two-level path
 *                       (Owner::TryAcquireTwoLevel): the database entry
 *                       first (Limit::DatabaseLevel); refused -> Refusal,
 *                       nothing held; then the node entry (the node's
 *                       limit); refused -> the database Slot's destructor,
 *                       Slot::Release (hot path, or OwnerOps::ReleaseSlow
 *                       with FutexWake(1)), and the node's refusal
 *   wait_level          one level of OwnerOps::AcquireWaiting
 *                       (OwnerOps::AcquireWaitingAt):
 *     sw := lv            `seen = entry.wake_seq.load()` (before the
 *                         decision)
 *     decide/queue        ReadLocked, Admits(count, waiters) -> Grant;
 *                         else ++waiters, waiting_on = e + 1, Unlock
 *     stale -> ...        FutexWait(wake_seq, seen) returning on a change;
 *                         `seen = after`
 *     decide              LockEntry, Admits(count, 0) -> Grant(dequeue);
 *                         else UnlockUnchanged and sleep again
 *     give-up             the deadline/interrupted break -> LeaveQueue
 *                         (--waiters, pass_on: wake_seq++, FutexWake(1))
 *   wait_acquire        OwnerOps::AcquireWaiting's two-level path: the
 *                       database level (OwnerOps::AcquireWaitingAt with the
 *                       database key) until granted (or the deadline:
 *                       nothing held); then, holding the database slot
 *                       (docs/budget.md: pending_node names the node), the
 *                       node level (AcquireWaitingAt) with the same
 *                       deadline; its give-up -> the database Slot's
 *                       destructor, Slot::Release, and the error
 *   release             Slot::Release of a two-level slot
 *                       (Slot::ReleaseParkedOrTwoLevel): the node entry
 *                       (hot-path CAS, or ReleaseSlow: --count, wake_seq++
 *                       and FutexWake(1) when waiters > 0), then, a
 *                       separate step, the database entry (the same)
 *   release_level       one of those releases (the undo of try_acquire and
 *                       of wait_acquire's node give-up too)
 *   Killer              SIGKILL of a process at any step (MAXDEATH)
 *   Reclaimer/recover   reclaim.cc OwnerOps::RecoverRecord's loop over the
 *                       dead owner's entries (cell hold, waiting_on): per
 *                       entry LockEntry, OwnerOps::RecomputeLocked (the
 *                       dead owner's hold and queue place dropped),
 *                       wake_seq++, Unlock, FutexWake(INT_MAX); also a
 *                       lock takeover's RecomputeLocked (LockEntry), which
 *                       recovers one entry alone
 *   Monitor             OwnerOps::Audit's checks, with docs/budget.md's
 *                       node relation (pending_node)
 */

#ifndef NP
#define NP 3
#endif
#ifndef LN
#define LN 1
#endif
#ifndef LD
#define LD 1
#endif
#ifndef OPS
#define OPS 2
#endif
#ifndef MAXDEATH
#define MAXDEATH 1
#endif
#if NP < 3 || NP > 4
#error "NP is 3 or 4"
#endif

/* Entries: the node's, then one per database. Processes 0 and 1 use
   database 0; process 2 database 1; process 3 database 2. */
#define NODE 0
#define NE NP
#define DBOF(p) ((p) < 2 -> 0 : (p) - 1)
#define DBE(p) (DBOF(p) + 1)

/* Levels, as a process names them (its queue place, the wake_seq it saw). */
#define LVN 1   /* the node entry */
#define LVD 2   /* the process's database entry */

/* The limits the code checks against, and the true bounds. */
#define LIMN LN
#ifdef BUG_DB_ONLY_CHECKS_NODE
#define LIMD LN
#else
#define LIMD LD
#endif
#define BOUND(e) (cnt[e] <= ((e) == NODE -> LN : LD))

/* ---- shared state: the counter table ---- */
byte cnt[NE];     /* Entry count (the word's count) */
byte wt[NE];      /* Entry waiters (queued waiting acquires) */
/* Owner records: the cells (hold of the node entry, of the database entry)
   and waiting_on (0, LVN, LVD). */
bit  hN[NP];
bit  hD[NP];
byte q[NP];

/* wake_seq: only its equality with a waiter's `seen` matters, so each
   process keeps which entry its `seen` was read from (sw: 0, LVN, LVD) and
   whether that entry's wake_seq has moved since (stale). A bump of entry e
   sets stale for every process whose `seen` is e's: exact, no wrap-around. */
byte sw[NP];
bit  stale[NP];

/* ---- the processes' own state (observers) ---- */
bit  has[NP];     /* holds a two-level Slot (as the process believes) */
bit  busy[NP];    /* inside an acquire or a release */
bit  dead[NP];
bit  done[NP];
byte deaths;

/* Named results of the checks, so that spin's report names the check:
   1 except at the step that asserts them false. */
bit  bounded = 1;    /* count <= its true limit, at a grant and always */
bit  balanced = 1;   /* each count and waiters is the sum of the cells */
bit  conserved = 1;  /* when quiescent: cells = the slots processes hold */
bit  node_used = 1;  /* NODE_USE_CHECK: no node slot idles for a db slot */

/* ---- what the monitor and the checks compute ---- */
#if NP == 4
#define SUMN (hN[0] + hN[1] + hN[2] + hN[3])
#define QN ((q[0] == LVN) + (q[1] == LVN) + (q[2] == LVN) + (q[3] == LVN))
#define BOUNDS_OK (cnt[0] <= LN && cnt[1] <= LD && cnt[2] <= LD && cnt[3] <= LD)
#define TABLE_OK (cnt[0] == SUMN && wt[0] == QN && \
                  cnt[1] == hD[0] + hD[1] && wt[1] == (q[0] == LVD) + (q[1] == LVD) && \
                  cnt[2] == hD[2] && wt[2] == (q[2] == LVD) && \
                  cnt[3] == hD[3] && wt[3] == (q[3] == LVD))
#define PENDING ((hD[0] && !hN[0]) + (hD[1] && !hN[1]) + (hD[2] && !hN[2]) + (hD[3] && !hN[3]))
#define QN_LIVE ((q[0] == LVN && !dead[0]) + (q[1] == LVN && !dead[1]) + \
                 (q[2] == LVN && !dead[2]) + (q[3] == LVN && !dead[3]))
#define IDLE_NODE ((hN[0] && !hD[0] && !dead[0]) + (hN[1] && !hD[1] && !dead[1]) + \
                   (hN[2] && !hD[2] && !dead[2]) + (hN[3] && !hD[3] && !dead[3]))
#define AUDIT_NODE (cnt[0] + PENDING == cnt[1] + cnt[2] + cnt[3])
#else
#define SUMN (hN[0] + hN[1] + hN[2])
#define QN ((q[0] == LVN) + (q[1] == LVN) + (q[2] == LVN))
#define BOUNDS_OK (cnt[0] <= LN && cnt[1] <= LD && cnt[2] <= LD)
#define TABLE_OK (cnt[0] == SUMN && wt[0] == QN && \
                  cnt[1] == hD[0] + hD[1] && wt[1] == (q[0] == LVD) + (q[1] == LVD) && \
                  cnt[2] == hD[2] && wt[2] == (q[2] == LVD))
#define PENDING ((hD[0] && !hN[0]) + (hD[1] && !hN[1]) + (hD[2] && !hN[2]))
#define QN_LIVE ((q[0] == LVN && !dead[0]) + (q[1] == LVN && !dead[1]) + (q[2] == LVN && !dead[2]))
#define IDLE_NODE ((hN[0] && !hD[0] && !dead[0]) + (hN[1] && !hD[1] && !dead[1]) + \
                   (hN[2] && !hD[2] && !dead[2]))
#define AUDIT_NODE (cnt[0] + PENDING == cnt[1] + cnt[2])
#endif
/* Quiet: a live process outside any operation; a dead one reclaimed at both
   levels. A quiet live process's cells are exactly its Slot. */
#define QUIET(p) (dead[p] -> (!hN[p] && !hD[p] && q[p] == 0) : !busy[p])
#define OWN_OK(p) (dead[p] || (hN[p] == has[p] && hD[p] == has[p] && q[p] == 0))
#if NP == 4
#define QUIESCENT (QUIET(0) && QUIET(1) && QUIET(2) && QUIET(3))
#define CONSERVED (TABLE_OK && OWN_OK(0) && OWN_OK(1) && OWN_OK(2) && OWN_OK(3) && \
                   wt[0] == 0 && wt[1] == 0 && wt[2] == 0 && wt[3] == 0 && AUDIT_NODE)
#else
#define QUIESCENT (QUIET(0) && QUIET(1) && QUIET(2))
#define CONSERVED (TABLE_OK && OWN_OK(0) && OWN_OK(1) && OWN_OK(2) && \
                   wt[0] == 0 && wt[1] == 0 && wt[2] == 0 && AUDIT_NODE)
#endif

#define WATCHES(p, e) ((sw[p] == LVN && (e) == NODE) || (sw[p] == LVD && (e) == DBE(p)))
#define BUMPP(p, e) if :: WATCHES(p, e) -> stale[p] = 1 :: else -> skip fi

/* wake_seq++ (FutexWake): every process asleep on the entry may look. */
inline bump(e) {
  BUMPP(0, e); BUMPP(1, e); BUMPP(2, e);
#if NP == 4
  BUMPP(3, e)
#endif
}

inline set_hold(lv, v) {
  if
  :: lv == LVN -> hN[me] = v
  :: else -> hD[me] = v
  fi
}

/* admit-new: an optional acquire, or a waiting acquire's first decision
   that does not queue: count + waiters < L (waiters first). */
inline admit_new(lv, e, L) {
  d_step {
    if
    :: cnt[e] + wt[e] < L ->
       cnt[e]++; set_hold(lv, 1); got = 1;
       bounded = BOUND(e); assert(bounded);
       printf("MSC: P%d admitted at entry %d (count %d, waiters %d)\n", me, e, cnt[e], wt[e])
    :: else -> got = 0;
       printf("MSC: P%d refused at entry %d (count %d, waiters %d)\n", me, e, cnt[e], wt[e])
    fi
  }
}

/* release at one level: count--, wake a waiter if any (if wake). */
inline release_level(lv, e, wake) {
  d_step {
    assert(cnt[e] > 0 && (lv == LVN -> hN[me] : hD[me]));
    cnt[e]--; set_hold(lv, 0);
    if
    :: wake && wt[e] > 0 -> bump(e)
    :: else -> skip
    fi;
    printf("MSC: P%d releases entry %d (count %d, waiters %d)\n", me, e, cnt[e], wt[e])
  }
}

/* The waiting protocol at one level: got = 1 granted, 0 gave up. */
inline wait_level(lv, e, L) {
  d_step {                                          /* seen = wake_seq */
    sw[me] = lv; stale[me] = 0;
    printf("MSC: P%d reads wake_seq of entry %d\n", me, e)
  };
  d_step {                                          /* decide, else queue */
    if
    :: cnt[e] + wt[e] < L ->
       cnt[e]++; set_hold(lv, 1); got = 1; sw[me] = 0; stale[me] = 0;
       bounded = BOUND(e); assert(bounded);
       printf("MSC: P%d granted at entry %d (count %d, waiters %d)\n", me, e, cnt[e], wt[e])
    :: else ->
       wt[e]++; q[me] = lv; got = 0;
       printf("MSC: P%d queues at entry %d (count %d, waiters %d)\n", me, e, cnt[e], wt[e])
    fi
  };
  if
  :: got -> skip
  :: else ->
     do
     :: d_step {                                    /* woken; seen = wake_seq */
          stale[me] -> stale[me] = 0;
          printf("MSC: P%d woken at entry %d\n", me, e)
        };
        d_step {                                    /* lock, decide */
          if
          :: cnt[e] < L ->                          /* woken compete among themselves */
             cnt[e]++; set_hold(lv, 1); wt[e]--; q[me] = 0; got = 1;
             sw[me] = 0; stale[me] = 0;
             bounded = BOUND(e); assert(bounded);
             printf("MSC: P%d granted at entry %d (count %d, waiters %d)\n", me, e, cnt[e], wt[e])
          :: else ->                                /* stay queued, sleep again */
             printf("MSC: P%d sleeps again at entry %d (count %d)\n", me, e, cnt[e])
          fi
        };
        if
        :: got -> break
        :: else -> skip
        fi
#ifdef GIVEUP
     :: d_step {                                    /* deadline: LeaveQueue */
          wt[e]--; q[me] = 0; sw[me] = 0; stale[me] = 0;
          if
          :: wt[e] > 0 -> bump(e)                   /* pass the wake-up on */
          :: else -> skip
          fi;
          printf("MSC: P%d gives up at entry %d (waiters %d)\n", me, e, wt[e])
        };
        break
#endif
     od
  fi
}

/* Owner::TryAcquire, two levels: the database, then the node. */
inline try_acquire() {
  admit_new(LVD, DBE(me), LIMD);
  if
  :: got ->
     admit_new(LVN, NODE, LIMN);
     if
     :: got -> skip
     :: else ->                                     /* refused by the node */
#ifdef NODE_USE_CHECK
        d_step { node_used = (IDLE_NODE == 0) }; assert(node_used);
#endif
#ifdef BUG_NO_ROLLBACK
        printf("MSC: P%d keeps its database slot (BUG_NO_ROLLBACK)\n", me)
#else
        release_level(LVD, DBE(me), 1)              /* undo: Slot::Release */
#endif
     fi
  :: else -> skip                                   /* refused by the database */
  fi
}

/* OwnerOps::AcquireWaiting, two levels. */
inline wait_acquire() {
#ifdef BUG_NODE_THEN_DB_WAIT
  wait_level(LVN, NODE, LIMN);
  if
  :: got ->
     wait_level(LVD, DBE(me), LIMD);
     if
     :: got -> skip
     :: else -> release_level(LVN, NODE, 1)
     fi
  :: else -> skip
  fi
#else
  wait_level(LVD, DBE(me), LIMD);
  if
  :: got ->
     wait_level(LVN, NODE, LIMN);                   /* holding the db slot */
     if
     :: got -> skip
     :: else ->                                     /* gave up at the node */
#ifdef BUG_NODE_GIVEUP_KEEPS_DB
        printf("MSC: P%d keeps its database slot (BUG_NODE_GIVEUP_KEEPS_DB)\n", me)
#else
        release_level(LVD, DBE(me), 1)
#endif
     fi
  :: else -> skip
  fi
#endif
}

/* Slot::Release of a two-level slot: the node entry, then the database. */
inline release() {
  d_step {
    has[me] = 0; busy[me] = 1;
    assert(cnt[NODE] > 0 && hN[me]);
    cnt[NODE]--; hN[me] = 0;
    if
    :: wt[NODE] > 0 -> bump(NODE)
    :: else -> skip
    fi;
    printf("MSC: P%d Slot::Release: entry 0 (count %d, waiters %d)\n", me, cnt[NODE], wt[NODE])
  };
  d_step {
    assert(cnt[DBE(me)] > 0 && hD[me]);
    cnt[DBE(me)]--; hD[me] = 0;
#ifndef BUG_RELEASE_DB_NO_WAKE
    if
    :: wt[DBE(me)] > 0 -> bump(DBE(me))
    :: else -> skip
    fi;
#endif
    busy[me] = 0;
    printf("MSC: P%d Slot::Release: entry %d (count %d, waiters %d)\n", me, DBE(me),
           cnt[DBE(me)], wt[DBE(me)])
  }
}

proctype Proc(byte me) {
  byte ops;
  bit got;
  {
    do
#if OPS == 0
    :: atomic { !has[me] -> busy[me] = 1 };        /* for ever */
#else
    :: atomic { !has[me] && ops < OPS -> ops++; busy[me] = 1 };
#endif
       if
       :: try_acquire()
       :: wait_acquire()
       fi;
       d_step { has[me] = got; busy[me] = 0; got = 0 }
    :: has[me] -> release()
#if OPS > 0
    :: atomic { !has[me] && ops == OPS -> done[me] = 1; break }
#endif
    od
  } unless {
    d_step { dead[me] -> sw[me] = 0; stale[me] = 0; ops = 0; got = 0 }
  }
}

/* SIGKILL of a process that has not finished, at any step. */
active proctype Killer() {
end_killer:
  do
  :: atomic {            /* not d_step: the choice of victim must stay free */
       deaths < MAXDEATH && ((!done[0] && !dead[0]) || (!done[1] && !dead[1]) ||
                             (!done[2] && !dead[2])
#if NP == 4
                             || (!done[3] && !dead[3])
#endif
                            ) ->
       if
       :: !done[0] && !dead[0] -> dead[0] = 1; printf("MSC: P0 dies\n")
       :: !done[1] && !dead[1] -> dead[1] = 1; printf("MSC: P1 dies\n")
       :: !done[2] && !dead[2] -> dead[2] = 1; printf("MSC: P2 dies\n")
#if NP == 4
       :: !done[3] && !dead[3] -> dead[3] = 1; printf("MSC: P3 dies\n")
#endif
       fi;
       deaths++
     }
  od
}

/* RecoverRecord / RecomputeLocked, one entry at a time: the dead process's
   hold and queue place there end, and wake_seq is bumped (always, as
   RecoverRecord does). */
#define NEEDS(p, lv) (dead[p] && ((lv) == LVN -> (hN[p] || q[p] == LVN) : (hD[p] || q[p] == LVD)))
inline recover(p, lv, e) {
  if
  :: lv == LVN && hN[p] -> cnt[e]--; hN[p] = 0
  :: lv == LVD && hD[p] -> cnt[e]--; hD[p] = 0
  :: else -> skip
  fi;
  if
  :: q[p] == lv -> wt[e]--; q[p] = 0
  :: else -> skip
  fi;
  bump(e);
  printf("MSC: P%d (dead) recovered at entry %d (count %d, waiters %d)\n", p, e, cnt[e], wt[e])
}

active proctype Reclaimer() {
end_reclaimer:
  do
  :: d_step { NEEDS(0, LVN) -> recover(0, LVN, NODE) }
  :: d_step { NEEDS(0, LVD) -> recover(0, LVD, DBE(0)) }
  :: d_step { NEEDS(1, LVN) -> recover(1, LVN, NODE) }
  :: d_step { NEEDS(1, LVD) -> recover(1, LVD, DBE(1)) }
  :: d_step { NEEDS(2, LVN) -> recover(2, LVN, NODE) }
  :: d_step { NEEDS(2, LVD) -> recover(2, LVD, DBE(2)) }
#if NP == 4
  :: d_step { NEEDS(3, LVN) -> recover(3, LVN, NODE) }
  :: d_step { NEEDS(3, LVD) -> recover(3, LVD, DBE(3)) }
#endif
  od
}

/* ---- the monitor ---- */
active proctype Monitor() {
end_monitor:
  do
  :: d_step { !BOUNDS_OK -> bounded = 0 }; assert(bounded)
  :: d_step { !TABLE_OK -> balanced = 0 }; assert(balanced)
  :: d_step { QUIESCENT && !CONSERVED -> conserved = 0 }; assert(conserved)
#ifdef NODE_USE_CHECK
  :: d_step { QN_LIVE > 0 && IDLE_NODE > 0 -> node_used = 0 }; assert(node_used)
#endif
  od
}

init {
  atomic {
    run Proc(0); run Proc(1); run Proc(2);
#if NP == 4
    run Proc(3)
#endif
  }
}

/* A live queued waiter eventually leaves the queue (granted or gave up),
   under weak fairness (pan -a -f), without deaths. */
#define Q(p) (q[p] != 0 && !dead[p])
#if NP == 4
ltl no_lost_wakeup { [] ((Q(0) -> <> !Q(0)) && (Q(1) -> <> !Q(1)) &&
                         (Q(2) -> <> !Q(2)) && (Q(3) -> <> !Q(3))) }
#else
ltl no_lost_wakeup { [] ((Q(0) -> <> !Q(0)) && (Q(1) -> <> !Q(1)) && (Q(2) -> <> !Q(2))) }
#endif
