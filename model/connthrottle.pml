/*
 * connthrottle.pml — a Promela model of the shared counter table's protocol:
 * the hot paths, the entry lock, waits and wake-ups, entry drop and revive,
 * the structure lock, and reclamation of owners that die at any step.
 * See model/README.md for what is modelled, what is abstracted and how to
 * run it (model/check.sh).
 *
 * Compile-time switches (spin -D...):
 *   ABA_BUG     the entry lock as of 9877a61: locking and unlocking only flip
 *               kLocked, so a locked word repeats (issue 13, finding 1).
 *               Spin must find a second believed holder.
 *   LOCK_OWNER  the lock stores the locker's owner id in the word, but the
 *               takeover still judges the holder by scanning in_flight
 *               (EntryHolderIsDead). Shows that an id alone does not fix
 *               finding 1 when the same owner relocks.
 *   (default)   every lock acquisition (and takeover) writes a fresh lock
 *               sequence into the word: the fix for finding 1.
 *   OPS=n       acquires per owner (default 2)
 *   MAXDEATH=n  owners that may die (default 1)
 *   FORCED      also forced acquires (counted above the limit)
 *   GIVEUP      waiting acquires may give up (deadline, cancel) at any time
 *
 * Sizes: 3 owners, 2 keys, 2 entries; key 0 has limit 1, key 1 limit 2.
 *
 * Unbounded counters (entry tags, wake_seq, the lock sequence) are kept
 * finite without wrap-around: a new value is the smallest one that neither
 * the shared word nor any copy an owner keeps (its cache, the word it read
 * before a compare-and-swap, the wake_seq it saw) holds. Only equality is
 * ever asked of these values, so this behaves exactly like a counter that
 * never wraps (the code's counters are 32 and 40 bits wide).
 *
 * MAPPING (model step -> code). Every `atomic`/`d_step` below is one
 * hardware step of the code (a load, a store or one compare-and-swap)
 * unless its comment says it merges several.
 *   try_acquire        owner.cc Owner::TryAcquire (hot path) and
 *                      owner_ops.cc OwnerOps::TryAcquireSlow
 *   wait_acquire       owner_ops.cc OwnerOps::AcquireWaiting
 *   forced_acquire     owner_ops.cc OwnerOps::AcquireForced
 *   release            owner.cc Slot::Release (hot path), OwnerOps::ReleaseSlow
 *   grant              owner_ops.cc OwnerOps::Grant
 *   lock_entry         owner_ops.cc OwnerOps::LockEntry (incl. takeover)
 *   holder_is_dead     owner_ops.cc OwnerOps::EntryHolderIsDead
 *   await_in_flight    owner_ops.cc OwnerOps::AwaitInFlight
 *   recompute          owner_ops.cc OwnerOps::RecomputeLocked
 *   unlock, unlock_unchanged, read_locked
 *                      owner_ops.cc OwnerOps::Unlock/WriteLocked,
 *                      UnlockUnchanged, ReadLocked
 *   lock_structure     owner_ops.cc OwnerOps::LockStructure (incl. takeover)
 *   find_or_insert     owner_ops.cc OwnerOps::FindLive + FindOrInsert +
 *                      AllocateEntryLocked (free entries only)
 *   drop_if_zombie     owner_ops.cc OwnerOps::DropIfZombie
 *   retire             owner_ops.cc OwnerOps::RetireLocked
 *   repair_index       owner_ops.cc OwnerOps::RepairIndexLocked
 *   reclaim_dead_owners reclaim.cc OwnerOps::ReclaimDeadOwners
 *   reclaim_owner      reclaim.cc OwnerOps::ReclaimOwner
 *   recover_record     reclaim.cc OwnerOps::RecoverRecord
 *   futex_wait/wake_*  internal/futex.cc FutexWait / FutexWake
 *   Killer             SIGKILL of an owner process at any step
 *   Monitor            OwnerOps::Audit's checks, when the table is quiescent
 */

#ifndef OPS
#define OPS 2
#endif
#ifndef MAXDEATH
#define MAXDEATH 1
#endif

#define N 3  /* owners (the code's owner ids are these + 1) */
#define E 2  /* entries */
#define K 2  /* keys */

#define RECLAIMING 1  /* TableOptions::reclaim_dead_owners */

/* Entry::word (layout.h), narrowed: count, has_waiters, live, locked,
   takeover, the lock field (sequence or owner id), the tag. */
#define CNTMASK 7
#define HW 8
#define LIVE 16
#define LOCKED 32
#define TAKEOVER 64
#define LSHIFT 8
#define LMASK 3840   /* 15 << 8 */
#define TSHIFT 12
#define TMASK 61440  /* 15 << 12 */
#define CNT(w) ((w) & CNTMASK)
#define LSEQ(w) (((w) >> LSHIFT) & 15)
#define TAG(w) (((w) >> TSHIFT) & 15)
/* owner.cc TryAcquire's kState: everything but the count and takeover */
#define STATEMASK (HW | LIVE | LOCKED | LMASK | TMASK)

#define LIMIT(k) ((k) == 0 -> 1 : 2)

/* OwnerRecord::identity: free, alive (pid, start time), reclaiming by r */
#define FREE 0
#define ALIVE 1
#define RECL 2

/* ---- shared state ---- */
int  word[E];        /* Entry::word */
bit  in_use[E];      /* Entry::in_use */
byte ekey[E];        /* the key an entry holds (hash, meta, host) */
byte waiters[E];     /* Entry::waiters */
byte forced[E];      /* Entry::forced */
byte wake_seq[E];    /* Entry::wake_seq (futex word) */
byte idx[K];         /* the index: key -> entry + 1 (Bucket[]) */
byte hold[N * E];    /* Cell::hold total */
byte fhold[N * E];   /* Cell::hold forced */
byte in_flight[N];   /* OwnerRecord::in_flight */
byte waiting_on[N];  /* OwnerRecord::waiting_on */
byte identity[N];    /* OwnerRecord::identity */
byte slock;          /* TableHeader::structure_lock: holder + 1 (see README) */

/* ---- the world and the observers ---- */
bit  dead[N];        /* the owner's process has died */
bit  done[N];        /* the owner finished its operations (and is idle, alive) */
bit  busy[N];        /* the owner is inside an operation */
byte sleeping[N];    /* asleep in FutexWait on entry + 1 */
byte believe[N];     /* entry + 1 whose lock the owner believes it holds */
bit  sbelieve[N];    /* the owner believes it holds the structure lock */
byte deaths;
/* copies owners keep, published for the fresh-value rule above */
int  cur_w[N];       /* the word read before a compare-and-swap */
byte cur_e[N];       /* ... of entry + 1 (0: none) */
byte cur_seen[N];    /* the wake_seq a waiter saw */
byte seen_e[N];      /* ... of entry + 1 (0: none) */
byte ce[N * K];      /* Owner's cache: key -> entry + 1 */
byte ct[N * K];      /* ... and the entry's tag */

#define ALIVE_OWNER(i) ((i) == me || (identity[i] == ALIVE && !dead[i]))

#define OTHERS_HOLD(le) ((me != 0 && believe[0] == (le) + 1 && !dead[0]) || \
                         (me != 1 && believe[1] == (le) + 1 && !dead[1]) || \
                         (me != 2 && believe[2] == (le) + 1 && !dead[2]))
#define OTHERS_SHOLD ((me != 0 && sbelieve[0] && !dead[0]) || \
                      (me != 1 && sbelieve[1] && !dead[1]) || \
                      (me != 2 && sbelieve[2] && !dead[2]))

#define WORD_COPY(o, le, v, F) (cur_e[o] == (le) + 1 && F(cur_w[o]) == (v))
#define TAG_HELD(le, t) (TAG(word[le]) == (t) || \
  (ce[0] == (le) + 1 && ct[0] == (t)) || (ce[1] == (le) + 1 && ct[1] == (t)) || \
  (ce[2] == (le) + 1 && ct[2] == (t)) || (ce[3] == (le) + 1 && ct[3] == (t)) || \
  (ce[4] == (le) + 1 && ct[4] == (t)) || (ce[5] == (le) + 1 && ct[5] == (t)) || \
  WORD_COPY(0, le, t, TAG) || WORD_COPY(1, le, t, TAG) || WORD_COPY(2, le, t, TAG))
#define LSEQ_HELD(le, s) (LSEQ(word[le]) == (s) || WORD_COPY(0, le, s, LSEQ) || \
  WORD_COPY(1, le, s, LSEQ) || WORD_COPY(2, le, s, LSEQ))
#define SEEN_HELD(le, v) (wake_seq[le] == (v) || \
  (seen_e[0] == (le) + 1 && cur_seen[0] == (v)) || \
  (seen_e[1] == (le) + 1 && cur_seen[1] == (v)) || \
  (seen_e[2] == (le) + 1 && cur_seen[2] == (v)))

/* The lock word an acquisition (LOCKVAL) or a takeover (TAKEVAL) writes. */
#if defined(ABA_BUG)
#define NEWSEQ(le) skip
#define LOCKVAL(c) ((c) | LOCKED)
#define TAKEVAL(c) ((c) ^ TAKEOVER)
#elif defined(LOCK_OWNER)
#define NEWSEQ(le) skip
#define LOCKVAL(c) ((c) | LOCKED | ((me + 1) << LSHIFT))
#define TAKEVAL(c) ((((c) & ~LMASK) | ((me + 1) << LSHIFT)) ^ TAKEOVER)
#else
#define NEWSEQ(le) fv = 1; do :: LSEQ_HELD(le, fv) -> fv++ :: else -> break od; assert(fv < 16)
#define LOCKVAL(c) ((c) | LOCKED | (fv << LSHIFT))
#define TAKEVAL(c) ((((c) & ~LMASK) | (fv << LSHIFT)) ^ TAKEOVER)
#endif

/* ---- futex (internal/futex.cc) ---- */

/* The waker's fetch_add on wake_seq, under the entry lock. */
inline bump_wake_seq(le) {
  d_step {
    fv = 0;
    do :: SEEN_HELD(le, fv) -> fv++ :: else -> break od;
    assert(fv < 16);
    wake_seq[le] = fv;
    fv = 0
  }
}

/* FutexWake(word, 1): one sleeper, any one. */
inline futex_wake_one(le) {
  atomic {
    if
    :: sleeping[0] == le + 1 -> sleeping[0] = 0
    :: sleeping[1] == le + 1 -> sleeping[1] = 0
    :: sleeping[2] == le + 1 -> sleeping[2] = 0
    :: else -> skip
    fi
  }
}

/* FutexWake(word, INT_MAX) */
inline futex_wake_all(le) {
  d_step {
    if :: sleeping[0] == le + 1 -> sleeping[0] = 0 :: else -> skip fi;
    if :: sleeping[1] == le + 1 -> sleeping[1] = 0 :: else -> skip fi;
    if :: sleeping[2] == le + 1 -> sleeping[2] = 0 :: else -> skip fi
  }
}

/* FutexWait(wake_seq, seen, timeout): sleeps only while the word still holds
   `seen` (checked atomically by the kernel). The poll timeout is modelled
   only once some owner has died: it is what rescues a wake-up whose waker
   died between its increment and its FutexWake. Without deaths, a waiter
   must be woken by a FutexWake or it sleeps for ever (which the liveness
   property and the end-state check report). */
inline futex_wait(le) {
  atomic {
    if
    :: wake_seq[le] == cur_seen[me] -> sleeping[me] = le + 1
    :: else -> skip
    fi
  };
  if
  :: sleeping[me] == 0 -> skip
  :: deaths > 0 && sleeping[me] != 0 -> sleeping[me] = 0  /* poll tick */
#ifdef GIVEUP
  :: sleeping[me] != 0 -> sleeping[me] = 0                /* deadline */
#endif
  fi
}

/* ---- the entry lock (owner_ops.cc) ---- */

inline read_locked(le) {
  d_step {
    rc = CNT(word[le]); rw = waiters[le]; rf = forced[le];
    rlive = ((word[le] & LIVE) != 0)
  }
}

/* Unlock = WriteLocked + the release store of the word; merged: the fields
   beside the word are read only under the lock. */
inline unlock(le) {
  d_step {
    waiters[le] = rw; forced[le] = rf;
    word[le] = (word[le] & (TMASK | TAKEOVER)) | rc | (rw > 0 -> HW : 0) | (rlive -> LIVE : 0);
    believe[me] = 0
  };
  in_flight[me] = 0
}

inline unlock_unchanged(le) {
  d_step { word[le] = word[le] & ~(LOCKED | LMASK); believe[me] = 0 };
  in_flight[me] = 0
}

/* EntryHolderIsDead: a stepwise scan of the other owners' in_flight. The
   load of in_flight and OwnerIsAlive are one step here. */
inline holder_is_dead(le) {
  isdead = 1; i = 0;
  do
  :: i == N -> break
  :: i < N ->
     if
     :: i != me && in_flight[i] == le + 1 && ALIVE_OWNER(i) -> isdead = 0; break
     :: else -> i++
     fi
  od;
  i = 0
}

/* AwaitInFlight: for each other owner in flight here, wait until it leaves
   or dies. */
inline await_in_flight(le) {
  i = 0;
  do
  :: i == N -> break
  :: i < N ->
     if
     :: i != me && in_flight[i] == le + 1 && ALIVE_OWNER(i) ->
        (in_flight[i] != le + 1 || !ALIVE_OWNER(i))
     :: else -> skip
     fi;
     i++
  od;
  i = 0
}

/* RecomputeLocked(e, exclude_self = false): the live ledger, one owner's
   cell and record per step; dead owners' cells and queue places cleared. */
inline recompute(le) {
  await_in_flight(le);
  rc = 0; rw = 0; rf = 0; i = 0;
  do
  :: i == N -> break
  :: i < N ->
     atomic {
       if
       :: hold[i * E + le] == 0 && waiting_on[i] != le + 1 &&
          !(i != me && in_flight[i] == le + 1) -> skip
       :: else ->
          if
          :: ALIVE_OWNER(i) ->
             rc = rc + hold[i * E + le]; rf = rf + fhold[i * E + le];
             if :: waiting_on[i] == le + 1 -> rw++ :: else -> skip fi
          :: else ->
             hold[i * E + le] = 0; fhold[i * E + le] = 0;
             if :: waiting_on[i] == le + 1 -> waiting_on[i] = 0 :: else -> skip fi
          fi
       fi;
       i++
     }
  od;
  i = 0;
  rlive = (in_use[le] && (rc > 0 || rw > 0))
}

/* LockEntry: load; if unlocked, set in_flight and compare-and-swap the lock
   in; if locked, spin until the word changes (modelled as blocking on it),
   or, now and then, ask whether the holder is dead and take the lock over
   with a compare-and-swap against the word read at the top. */
inline lock_entry(le) {
  do
  :: atomic { cur_w[me] = word[le]; cur_e[me] = le + 1 };
     if
     :: !(cur_w[me] & LOCKED) ->
        in_flight[me] = le + 1;
        atomic {
          if
          :: word[le] == cur_w[me] ->
             NEWSEQ(le);
             word[le] = LOCKVAL(cur_w[me]);
             assert(!OTHERS_HOLD(le));  /* one believed holder per lock */
             believe[me] = le + 1; lok = 1
          :: else -> lok = 0
          fi;
          fv = 0
        };
        if
        :: lok -> break
        :: else -> d_step { cur_w[me] = 0; cur_e[me] = 0 }; in_flight[me] = 0
        fi
     :: else ->
        if
        :: word[le] != cur_w[me] -> d_step { cur_w[me] = 0; cur_e[me] = 0 }
        :: RECLAIMING ->
           holder_is_dead(le);
           if
           :: isdead ->
              isdead = 0;
              in_flight[me] = le + 1;
              atomic {
                if
                :: word[le] == cur_w[me] ->
                   NEWSEQ(le);
                   word[le] = TAKEVAL(cur_w[me]);
                   assert(!OTHERS_HOLD(le));  /* one believed holder per lock */
                   believe[me] = le + 1; lok = 1
                :: else -> lok = 0
                fi;
                fv = 0;
                cur_w[me] = 0; cur_e[me] = 0
              };
              if
              :: lok ->
                 lok = 0;
                 recompute(le);
                 d_step {  /* WriteLocked: still locked */
                   waiters[le] = rw; forced[le] = rf;
                   word[le] = (word[le] & (TMASK | TAKEOVER | LOCKED | LMASK)) | rc |
                              (rw > 0 -> HW : 0) | (rlive -> LIVE : 0)
                 };
                 bump_wake_seq(le);
                 futex_wake_all(le);
                 break
              :: else -> in_flight[me] = 0
              fi
           :: else -> d_step { cur_w[me] = 0; cur_e[me] = 0 }
           fi
        fi
     fi
  od;
  /* the jump target of the loop's breaks */
  atomic { cur_w[me] = 0; cur_e[me] = 0; lok = 0; rc = 0; rw = 0; rf = 0; rlive = 0 }
}

/* ---- the structure lock ---- */

inline unlock_structure() {
  d_step { slock = 0; sbelieve[me] = 0 }
}

/* RetireLocked: wait out a hot-path release still writing its cell, then
   free the entry. Only a dead owner's hold may be left on it. */
inline retire(le) {
  await_in_flight(le);
  d_step {
    assert(hold[0 * E + le] == 0 || !ALIVE_OWNER(0));
    assert(hold[1 * E + le] == 0 || !ALIVE_OWNER(1));
    assert(hold[2 * E + le] == 0 || !ALIVE_OWNER(2));
    hold[0 * E + le] = 0; hold[1 * E + le] = 0; hold[2 * E + le] = 0;
    fhold[0 * E + le] = 0; fhold[1 * E + le] = 0; fhold[2 * E + le] = 0;
    in_use[le] = 0
  }
}

/* RepairIndexLocked: clear the index, then per entry: lock (taking over
   dead holders' locks), retire an unused one, re-index the others. */
inline repair_index() {
  d_step { idx[0] = 0; idx[1] = 0 };
  ee = 0;
  do
  :: ee == E -> break
  :: ee < E ->
     lock_entry(ee);
     read_locked(ee);
     if
     :: in_use[ee] && rc == 0 && rw == 0 -> retire(ee); rlive = 0; unlock(ee)
     :: in_use[ee] && !(rc == 0 && rw == 0) -> idx[ekey[ee]] = ee + 1; unlock_unchanged(ee)
     :: !in_use[ee] -> unlock_unchanged(ee)
     fi;
     d_step { rc = 0; rw = 0; rf = 0; rlive = 0 };
     ee++
  od;
  ee = 0
}

/* LockStructure: compare-and-swap 0 -> mine; else wait for a change, or
   take the lock over from a dead holder (HolderIsDead) and repair. */
inline lock_structure() {
  do
  :: atomic {
       if
       :: slock == 0 ->
          slock = me + 1; assert(!OTHERS_SHOLD); sbelieve[me] = 1; sok = 1
       :: else -> scur = slock; sok = 0
       fi
     };
     if
     :: sok -> break
     :: else ->
        if
        :: slock != scur -> scur = 0
        :: RECLAIMING && !ALIVE_OWNER(scur - 1) ->
           atomic {
             if
             :: slock == scur ->
                slock = me + 1; assert(!OTHERS_SHOLD); sbelieve[me] = 1; sok = 1
             :: else -> sok = 0
             fi;
             scur = 0
           };
           if
           :: sok -> repair_index(); break
           :: else -> skip
           fi
        fi
     fi
  od;
  sok = 0
}

/* DropIfZombie */
inline drop_if_zombie(le) {
  lock_structure();
  lock_entry(le);
  read_locked(le);
  if
  :: in_use[le] && !rlive && rc == 0 && rw == 0 ->
     d_step { if :: idx[ekey[le]] == le + 1 -> idx[ekey[le]] = 0 :: else -> skip fi };
     retire(le)
  :: else -> skip
  fi;
  unlock_unchanged(le);
  unlock_structure();
  d_step { rc = 0; rw = 0; rf = 0; rlive = 0 }
}

/* FindLive, then FindOrInsert under the structure lock: revive the key's
   zombie, or allocate a free entry with a new tag. Leaves `e` locked and
   found = 1, or found = 0 when the table is full. */
inline find_or_insert(fk) {
  found = 0;
  d_step { e = idx[fk] };  /* lock-free probe */
  if
  :: e != 0 ->
     e = e - 1;
     lock_entry(e);
     if
     :: (word[e] & LIVE) && ekey[e] == fk -> found = 1
     :: else -> unlock_unchanged(e)
     fi
  :: else -> skip
  fi;
  if
  :: !found ->
     lock_structure();
     d_step { e = idx[fk] };
     if
     :: e != 0 ->
        e = e - 1;
        lock_entry(e);
        if
        :: in_use[e] && ekey[e] == fk ->
           word[e] = word[e] | LIVE;  /* revive a zombie */
           found = 1; unlock_structure()
        :: else -> unlock_unchanged(e)
        fi
     :: else -> skip
     fi;
     if
     :: !found ->
        /* AllocateEntryLocked: in_use changes only under the structure lock */
        d_step { if :: !in_use[0] -> e = 1 :: in_use[0] && !in_use[1] -> e = 2 :: else -> e = 0 fi };
        if
        :: e == 0 -> unlock_structure()  /* table full */
        :: else ->
           e = e - 1;
           lock_entry(e);
           d_step {  /* key, counters, new tag, then the bucket (merged) */
             assert(!(in_use[1 - e] && ekey[1 - e] == fk));  /* one entry per key */
             ekey[e] = fk; in_use[e] = 1; waiters[e] = 0; forced[e] = 0;
             fv = 0;
             do :: TAG_HELD(e, fv) -> fv++ :: else -> break od;
             assert(fv < 16);
             word[e] = (fv << TSHIFT) | LIVE | LOCKED | (word[e] & (TAKEOVER | LMASK));
             fv = 0;
             idx[fk] = e + 1
           };
           found = 1;
           unlock_structure()
        fi
     :: else -> skip
     fi
  :: else -> skip
  fi
}

/* Grant: record the slot in the owner's cell, then write and unlock. */
inline grant(ge, gk, dq, fz) {
  read_locked(ge);
  d_step {
    hold[me * E + ge]++;
    if :: fz -> fhold[me * E + ge]++ :: else -> skip fi
  };
  d_step {
    rc++;
    if :: fz -> rf++ :: else -> skip fi;
    if :: dq -> rw--; waiting_on[me] = 0 :: else -> skip fi;
    rlive = 1;
    assert(in_use[ge] && ekey[ge] == gk);  /* the slot is the key's */
    assert(fz || rc <= LIMIT(gk))          /* count <= limit at a non-forced grant */
  };
  unlock(ge);
  got = 1
}

/* ---- reclamation (reclaim.cc) ---- */

inline recover_record(d) {
  d_step { wif = in_flight[d] };
  /* the structure lock first, if the dead owner held it (load + CAS merged) */
  atomic {
    if
    :: slock == d + 1 -> slock = me + 1; assert(!OTHERS_SHOLD); sbelieve[me] = 1; rok = 1
    :: else -> rok = 0
    fi
  };
  if
  :: rok -> rok = 0; repair_index(); unlock_structure()
  :: else -> skip
  fi;
  e2 = 0;
  do
  :: e2 == E -> break
  :: e2 < E ->
     if
     :: hold[d * E + e2] == 0 && waiting_on[d] != e2 + 1 && wif != e2 + 1 -> skip
     :: else ->
        lock_entry(e2);
        recompute(e2);
        zom2 = (!rlive && in_use[e2]);
        bump_wake_seq(e2);
        unlock(e2);
        futex_wake_all(e2);
        d_step { rc = 0; rw = 0; rf = 0; rlive = 0 };
        if :: zom2 -> zom2 = 0; drop_if_zombie(e2) :: else -> skip fi
     fi;
     e2++
  od;
  atomic { in_flight[d] = 0; e2 = 0; wif = 0 }
}

inline reclaim_owner(d) {
  atomic {
    if
    :: identity[d] == obs -> identity[d] = RECL + me; rok = 1
    :: else -> rok = 0
    fi
  };
  if
  :: rok ->
     rok = 0;
     recover_record(d);
     d_step { if :: identity[d] == RECL + me -> identity[d] = FREE :: else -> skip fi }
  :: else -> skip
  fi
}

/* ReclaimDeadOwners: a stepwise scan of the owner records. (The code's
   RecoverRecord also resumes reclamations the dead owner was running; here
   the scan does, as it finds them, which is the same work.) */
inline reclaim_dead_owners() {
  r = 0;
  do
  :: r == N -> break
  :: r < N ->
     if
     :: r != me ->
        d_step { obs = identity[r] };
        if
        :: obs == ALIVE && dead[r] -> reclaim_owner(r)
        :: obs >= RECL && obs - RECL != me && !ALIVE_OWNER(obs - RECL) -> reclaim_owner(r)
        :: else -> skip
        fi
     :: else -> skip
     fi;
     r++
  od;
  atomic { r = 0; obs = 0 }
}

/* ---- acquire and release ---- */

inline try_acquire(k) {
  /* the hot path: a cached entry, live, unlocked, no waiters, same tag */
  d_step { e = ce[me * K + k] };
  if
  :: e != 0 ->
     e = e - 1;
     d_step { cur_w[me] = word[e]; cur_e[me] = e + 1 };
     if
     :: (cur_w[me] & STATEMASK) == (LIVE | (ct[me * K + k] << TSHIFT)) &&
        CNT(cur_w[me]) < LIMIT(k) ->
        in_flight[me] = e + 1;
        atomic {
          if
          :: word[e] == cur_w[me] ->
             word[e] = cur_w[me] + 1;
             assert(in_use[e] && ekey[e] == k);
             assert(CNT(word[e]) <= LIMIT(k));  /* count <= limit at a grant */
             got = 1
          :: else -> skip
          fi;
          cur_w[me] = 0; cur_e[me] = 0
        };
        if
        :: got -> hold[me * E + e]++; in_flight[me] = 0
        :: else -> in_flight[me] = 0
        fi
     :: else -> d_step { cur_w[me] = 0; cur_e[me] = 0 }
     fi
  :: else -> skip
  fi;
  /* TryAcquireSlow */
  if
  :: !got ->
     find_or_insert(k);
     if
     :: found ->
        d_step { ce[me * K + k] = e + 1; ct[me * K + k] = TAG(word[e]) };  /* Remember */
        read_locked(e);
        if
        :: rc + rw < LIMIT(k) -> grant(e, k, 0, 0)
        :: else ->
           unlock_unchanged(e);
           d_step { rc = 0; rw = 0; rf = 0; rlive = 0 };
           if :: RECLAIMING -> reclaim_dead_owners() :: skip fi  /* MaybeReclaim... */
        fi
     :: else -> skip
     fi
  :: else -> skip
  fi
}

inline forced_acquire(k) {
  find_or_insert(k);
  if
  :: found -> grant(e, k, 0, 1)
  :: else -> skip
  fi
}

inline wait_acquire(k) {
  find_or_insert(k);
  if
  :: found ->
     d_step { cur_seen[me] = wake_seq[e]; seen_e[me] = e + 1 };  /* before the check */
     read_locked(e);
     if
     :: rc + rw < LIMIT(k) -> grant(e, k, 0, 0)
     :: else ->
        d_step { rw++; waiting_on[me] = e + 1 };  /* queue */
        unlock(e);
        do
#ifdef GIVEUP
        :: gave = 1; break  /* interrupted, or the deadline passed */
#endif
        :: true ->
           futex_wait(e);
           d_step {
             tick = (wake_seq[e] == cur_seen[me]); cur_seen[me] = wake_seq[e]
           };
           if :: tick && RECLAIMING -> tick = 0; reclaim_dead_owners() :: else -> tick = 0 fi;
           lock_entry(e);
           read_locked(e);
           if
           :: rc < LIMIT(k) -> grant(e, k, 1, 0); break  /* only queued waiters compete */
           :: else -> unlock_unchanged(e); d_step { rc = 0; rw = 0; rf = 0; rlive = 0 }
           fi
        od;
        if
        :: gave ->  /* leave the queue, passing a consumed wake-up on */
           lock_entry(e);
           read_locked(e);
           d_step {
             rw--; waiting_on[me] = 0; pass = (rw > 0); zom = (rc == 0 && rw == 0);
             if :: zom -> rlive = 0 :: else -> skip fi
           };
           if :: pass -> bump_wake_seq(e) :: else -> skip fi;
           unlock(e);
           if :: pass -> futex_wake_one(e) :: else -> skip fi;
           if :: zom -> drop_if_zombie(e) :: else -> skip fi
        :: else -> skip
        fi
     fi
  :: else -> skip
  fi;
  d_step { cur_seen[me] = 0; seen_e[me] = 0 }
}

inline release_slow(le, fz) {
  lock_entry(le);
  read_locked(le);
  d_step {
    h = hold[me * E + le];
    /* ReleaseSlow's `recorded`: the slot is in the cell and in the count */
    assert(h > 0 && rc > 0 && (!fz || (fhold[me * E + le] > 0 && rf > 0)));
    rc--;
    if :: fz -> rf-- :: else -> skip fi;
    wake = (rw > 0); zom = (rc == 0 && rw == 0);
    if :: zom -> rlive = 0 :: else -> skip fi
  };
  d_step {
    hold[me * E + le] = h - 1;
    if :: fz -> fhold[me * E + le]-- :: else -> skip fi
  };
  if :: wake -> bump_wake_seq(le) :: else -> skip fi;
  unlock(le);
  if :: wake -> futex_wake_one(le) :: else -> skip fi;
  if :: zom -> drop_if_zombie(le) :: else -> skip fi
}

inline release(le) {
  if
  :: hold[me * E + le] > fhold[me * E + le] -> fz = 0  /* a connection slot */
  :: fhold[me * E + le] > 0 -> fz = 1                  /* a forced slot */
  fi;
  if
  :: !fz ->  /* the hot path */
     d_step { cur_w[me] = word[le]; cur_e[me] = le + 1; h = hold[me * E + le] };
     if
     :: !(cur_w[me] & (LOCKED | HW)) && CNT(cur_w[me]) > 0 && h > 0 ->
        zom = (CNT(cur_w[me]) == 1);
        in_flight[me] = le + 1;
        atomic {
          if
          :: word[le] == cur_w[me] -> word[le] = (cur_w[me] - 1) & ~(zom -> LIVE : 0); got = 1
          :: else -> skip
          fi;
          cur_w[me] = 0; cur_e[me] = 0
        };
        if
        :: got ->
           hold[me * E + le] = h - 1;
           in_flight[me] = 0;
           if :: zom -> drop_if_zombie(le) :: else -> skip fi
        :: else -> in_flight[me] = 0
        fi
     :: else -> d_step { cur_w[me] = 0; cur_e[me] = 0 }
     fi
  :: else -> skip
  fi;
  if
  :: !got -> zom = 0; release_slow(le, fz)
  :: else -> skip
  fi
}

#define HOLDS_NOTHING (hold[me * E + 0] == 0 && hold[me * E + 1] == 0)

proctype Owner(byte me) {
  byte e, k, i, r, ee, e2, obs, scur, fv, rc, rw, rf, h, wif, ops;
  bit found, got, lok, sok, rok, isdead, rlive, zom, zom2, wake, pass, gave, tick, fz;
  {
    do
    :: atomic { ops < OPS -> busy[me] = 1; ops++; if :: k = 0 :: k = 1 fi };
       if
       :: try_acquire(k)
#ifdef FORCED
       :: forced_acquire(k)
#endif
       /* A pool never waits while holding a connection (DESIGN.md). */
       :: HOLDS_NOTHING -> wait_acquire(k)
       fi;
       d_step {
         e = 0; k = 0; found = 0; got = 0; rc = 0; rw = 0; rf = 0; rlive = 0; h = 0;
         zom = 0; wake = 0; pass = 0; gave = 0; fz = 0; busy[me] = 0
       }
    :: atomic { hold[me * E + 0] > 0 -> busy[me] = 1; e = 0 };
       release(e);
       d_step { e = 0; got = 0; rc = 0; rw = 0; rf = 0; rlive = 0; h = 0; zom = 0; wake = 0; fz = 0; busy[me] = 0 }
    :: atomic { hold[me * E + 1] > 0 -> busy[me] = 1; e = 1 };
       release(e);
       d_step { e = 0; got = 0; rc = 0; rw = 0; rf = 0; rlive = 0; h = 0; zom = 0; wake = 0; fz = 0; busy[me] = 0 }
    :: atomic { ops == OPS && HOLDS_NOTHING -> done[me] = 1; break }
    od
  } unless {
    atomic {
      dead[me] ->
      sleeping[me] = 0; cur_w[me] = 0; cur_e[me] = 0; cur_seen[me] = 0; seen_e[me] = 0;
      e = 0; k = 0; i = 0; r = 0; ee = 0; e2 = 0; obs = 0; scur = 0; fv = 0; rc = 0; rw = 0;
      rf = 0; h = 0; wif = 0; ops = 0; found = 0; got = 0; lok = 0; sok = 0; rok = 0;
      isdead = 0; rlive = 0; zom = 0; zom2 = 0; wake = 0; pass = 0; gave = 0; tick = 0; fz = 0
    }
  }
}

/* SIGKILL: any owner that has not finished, at any step, up to MAXDEATH. */
active proctype Killer() {
  do
  :: atomic {
       deaths < MAXDEATH && ((!done[0] && !dead[0]) || (!done[1] && !dead[1]) ||
                             (!done[2] && !dead[2])) ->
       if
       :: !done[0] && !dead[0] -> dead[0] = 1
       :: !done[1] && !dead[1] -> dead[1] = 1
       :: !done[2] && !dead[2] -> dead[2] = 1
       fi;
       deaths++
     }
  :: break
  od
}

/* Audit's checks whenever the table is quiescent: no live owner inside an
   operation and every dead owner reclaimed (its record free). Then
   count == the sum of live holds, waiters == live queued owners, no entry
   is locked, every entry in use is reachable through the index, and the
   structure lock is free. */
#define LV(o) (!dead[o])
#define SUMHOLD(le) ((LV(0) -> hold[0 * E + le] : 0) + (LV(1) -> hold[1 * E + le] : 0) + \
                     (LV(2) -> hold[2 * E + le] : 0))
#define SUMFORCED(le) ((LV(0) -> fhold[0 * E + le] : 0) + (LV(1) -> fhold[1 * E + le] : 0) + \
                       (LV(2) -> fhold[2 * E + le] : 0))
#define QUEUED(le) ((LV(0) && waiting_on[0] == le + 1 -> 1 : 0) + \
                    (LV(1) && waiting_on[1] == le + 1 -> 1 : 0) + \
                    (LV(2) && waiting_on[2] == le + 1 -> 1 : 0))
#define QUIET(o) (dead[o] -> identity[o] == FREE : !busy[o])
#define QUIESCENT (QUIET(0) && QUIET(1) && QUIET(2))
#define BALANCED(le) (CNT(word[le]) == SUMHOLD(le) && forced[le] == SUMFORCED(le) && \
                      waiters[le] == QUEUED(le) && !(word[le] & LOCKED) && \
                      (in_use[le] || (CNT(word[le]) == 0 && waiters[le] == 0)) && \
                      (!in_use[le] || idx[ekey[le]] == le + 1))
#define AUDIT_OK (BALANCED(0) && BALANCED(1) && slock == 0)

active proctype Monitor() {
end_monitor:
  atomic { QUIESCENT && !AUDIT_OK -> assert(false) }
}

init {
  atomic {
    identity[0] = ALIVE; identity[1] = ALIVE; identity[2] = ALIVE;
    run Owner(0); run Owner(1); run Owner(2)
  }
}

/* No lost wake-up: a live queued waiter leaves the queue (is granted a slot,
   or gives up). Checked with weak fairness (pan -a -f). */
#define Q(o) (waiting_on[o] != 0 && !dead[o])
ltl no_lost_wakeup { [] ((Q(0) -> <> !Q(0)) && (Q(1) -> <> !Q(1)) && (Q(2) -> <> !Q(2))) }
