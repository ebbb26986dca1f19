/*
 * connthrottle.pml — a Promela model of the shared counter table's protocol:
 * the hot paths (with zombie revive), the entry lock and its stamp, waits and
 * wake-ups, entry drop, the structure lock, reclamation of owners that die at
 * any step, and new processes that register into a dead owner's record
 * (fresh, after reclamation, or by adoption).
 * See model/README.md for what is modelled, what is abstracted and how to
 * run it (model/check.sh).
 *
 * Compile-time switches (spin -D...):
 *   (default)        the code: every entry-lock acquisition writes a stamp
 *                    (owner id, the record's lock_seq mod SEQMOD); a waiter
 *                    judges the holder the word names by its record's
 *                    identity, publishing it in OwnerRecord::judging first;
 *                    a process registering into a record waits until no
 *                    live owner judges it (AwaitJudges).
 *   NO_JUDGE_HAZARD  without the judging field and AwaitJudges (the code as
 *                    of 2a4f58b). Spin must find a second believed holder of
 *                    an entry lock: a stale judgement of a dead holder whose
 *                    record a new process has taken and whose stamp has
 *                    wrapped round.
 *   ABA_BUG          the entry lock as of 9877a61: locking only sets kLocked
 *                    (the count stays in the word), the holder is judged by a
 *                    scan of in_flight and a takeover flips a bit. Spin must
 *                    find a second believed holder, with no death.
 *   LOCK_OWNER       the stamp is the locker's id alone (no sequence), but the
 *                    holder is still judged by the in_flight scan. Spin finds
 *                    the same violation (the same owner relocks).
 *   SEQMOD=m         the stamp's sequence modulus (default 2; the code keeps
 *                    4 bits, i.e. 16). Small, so that wrap-around is reached.
 *   OPS=n            acquires per process (default 2)
 *   MAXDEATH=n       processes that may die (default 1); after each death a
 *                    new process may register into the dead one's record
 *   E=n              entries (default 2; 1 makes the two keys compete for
 *                    one entry: zombies are dropped for a new key)
 *   FORCED           also forced acquires (counted above the limit)
 *   GIVEUP           waiting acquires may give up (deadline, cancel)
 *
 * Sizes: 3 owner records, 2 keys, E entries; key 0 has limit 1, key 1 limit 2.
 * A proctype Owner(me) is the sequence of processes that hold record me: the
 * first is registered by init; after it dies, a new process may claim the
 * record (fresh once it is reclaimed and free, or by adoption while every
 * record is taken), with a new identity (generation).
 *
 * Unbounded counters (entry tags, wake_seq, the structure-lock sequence) are
 * kept finite without wrap-around: a new value is the smallest one that
 * neither the shared word nor any copy an owner keeps (its cache, the word it
 * read before a compare-and-swap, the wake_seq it saw) holds. Only equality
 * is ever asked of these values, so this behaves exactly like a counter that
 * never wraps (the code's counters are 32 and 40 bits wide). The entry-lock
 * stamp's sequence is NOT abstracted this way: it is the record's lock_seq
 * mod SEQMOD, and wraps, as the code's 4 bits do.
 *
 * MAPPING (model step -> code). Every `atomic`/`d_step` below is one
 * hardware step of the code (a load, a store or one compare-and-swap)
 * unless its comment says it merges several.
 *   try_acquire        owner.cc Owner::TryAcquire (hot path, incl. zombie
 *                      revive) and owner_ops.cc OwnerOps::TryAcquireSlow
 *   wait_acquire       owner_ops.cc OwnerOps::AcquireWaiting, LeaveQueue
 *   forced_acquire     owner_ops.cc OwnerOps::AcquireForced
 *   release            owner.cc Slot::Release (hot path), OwnerOps::ReleaseSlow
 *   grant              owner_ops.cc OwnerOps::Grant
 *   lock_entry         owner_ops.cc OwnerOps::LockEntry (stamp, takeover,
 *                      own-id words taken over at once, EndJudging)
 *   holder_is_dead     reclaim.cc OwnerOps::HolderIsDead (judging, then
 *                      OwnerIsAlive of the named holder)
 *   holder_is_dead_scan  the 9877a61 EntryHolderIsDead (ABA_BUG, LOCK_OWNER)
 *   await_in_flight    owner_ops.cc OwnerOps::AwaitInFlight
 *   recompute          owner_ops.cc OwnerOps::RecomputeLocked
 *   read_locked, write_locked, unlock, unlock_unchanged
 *                      owner_ops.cc ReadLocked, WriteLocked, Unlock,
 *                      UnlockUnchanged (the private count: Owner::locked_count_)
 *   lock_structure     owner_ops.cc OwnerOps::LockStructure (incl. takeover)
 *   find_or_insert     owner_ops.cc FindLive + FindOrInsert +
 *                      AllocateEntryLocked (free entry, else drop a zombie)
 *   retire             owner_ops.cc OwnerOps::RetireLocked
 *   repair_index       owner_ops.cc OwnerOps::RepairIndexLocked
 *   reclaim_dead_owners reclaim.cc OwnerOps::ReclaimDeadOwners
 *   reclaim_owner      reclaim.cc OwnerOps::ReclaimOwner
 *   recover_record     reclaim.cc OwnerOps::RecoverRecord (adopted or not)
 *   recover_adopted    reclaim.cc OwnerOps::RecoverAdoptedRecord, incl.
 *                      finishing the reclamations the record was running
 *   await_judges       reclaim.cc OwnerOps::AwaitJudges
 *   start_on_free_record reclaim.cc OwnerOps::StartOnFreeRecord
 *   end_dead: ...      counter_table.cc CounterTable::RegisterOwner (claim a
 *                      free record, or adopt a dead process's record)
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
#ifndef SEQMOD
#define SEQMOD 2
#endif
#ifndef E
#define E 2  /* entries (1 or 2) */
#endif

#define N 3  /* owner records (the code's owner ids are these + 1) */
#define K 2  /* keys */

#define RECLAIMING 1  /* TableOptions::reclaim_dead_owners */

#if defined(ABA_BUG) || defined(LOCK_OWNER)
#define SCAN_JUDGE      /* the holder is judged by scanning in_flight */
#ifndef NO_JUDGE_HAZARD
#define NO_JUDGE_HAZARD /* these variants predate OwnerRecord::judging */
#endif
#endif

/* Entry::word (layout.h), narrowed: bits 0..3 the count (unlocked) or the
   lock stamp (locked: holder id in bits 0..1, lock_seq mod SEQMOD in bits
   2..3), has_waiters, live, locked, (ABA_BUG's takeover bit), the tag. */
#define SMASK 15
#define HW 16
#define LIVE 32
#define LOCKED 64
#define TAKEOVER 128
#define TSHIFT 8
#define TMASK 3840   /* 15 << 8 */
#define CNT(w) ((w) & SMASK)
#define TAG(w) (((w) >> TSHIFT) & 15)
#define HOLDER(w) ((w) & 3)                 /* Word::Holder: record + 1 */
#define STAMP(id, s) ((id) | ((s) << 2))    /* Word::Stamp */
/* owner.cc TryAcquire's kState: everything but the count */
#define STATE(w) ((w) & ~(SMASK | TAKEOVER))

#define LIMIT(k) ((k) == 0 -> 1 : 2)

/* OwnerRecord::identity: free; alive, with the process's generation (its pid
   and start time); reclaiming by record r. */
#define FREE 0
#define ALIVE0 1
#define RECL 8
#define IS_ALIVE_ID(v) ((v) >= ALIVE0 && (v) < RECL)

/* TableHeader::structure_lock: 0, or holder + 1 | seq << 2 */
#define SOWNER(w) ((w) & 3)
#define SWORD(id, s) ((id) | ((s) << 2))

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
byte lseq[N];        /* OwnerRecord::lock_seq, mod SEQMOD (never reset) */
byte judging[N];     /* OwnerRecord::judging: record + 1 being judged */
byte slock;          /* TableHeader::structure_lock */

/* ---- the world and the observers ---- */
bit  dead[N];        /* the process now on the record has died */
byte gen[N];         /* that process's generation on the record */
bit  done[N];        /* the process finished its operations (and is idle, alive) */
bit  busy[N];        /* the process is inside an operation (or registering) */
bit  adopting[N];    /* the process adopted the record and is recovering it:
                        the cells still hold the predecessor's slots */
byte sleeping[N];    /* asleep in FutexWait on entry + 1 */
byte believe[N];     /* entry + 1 whose lock the process believes it holds */
bit  sbelieve[N];    /* the process believes it holds the structure lock */
byte deaths;
/* copies owners keep, published for the fresh-value rule above */
int  cur_w[N];       /* the word read before a compare-and-swap */
byte cur_e[N];       /* ... of entry + 1 (0: none) */
byte scur[N];        /* the structure-lock word read before a compare-and-swap */
byte cur_seen[N];    /* the wake_seq a waiter saw */
byte seen_e[N];      /* ... of entry + 1 (0: none) */
byte ce[N * K];      /* Owner's cache: key -> entry + 1 */
byte ct[N * K];      /* ... and the entry's tag */

/* OwnerIsAlive(i) as owner `me` asks it (itself: always). */
#define LIVE_PROC(i) (IS_ALIVE_ID(identity[i]) && !dead[i])
#define ALIVE_OWNER(i) ((i) == me || LIVE_PROC(i))

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
#define SEEN_HELD(le, v) (wake_seq[le] == (v) || \
  (seen_e[0] == (le) + 1 && cur_seen[0] == (v)) || \
  (seen_e[1] == (le) + 1 && cur_seen[1] == (v)) || \
  (seen_e[2] == (le) + 1 && cur_seen[2] == (v)))
#define SW_HELD(w) (slock == (w) || scur[0] == (w) || scur[1] == (w) || scur[2] == (w))

/* The word an entry-lock acquisition (LOCKVAL) or takeover (TAKEVAL) writes. */
#if defined(ABA_BUG)
#define LOCKVAL(c) ((c) | LOCKED)
#define TAKEVAL(c) ((c) ^ TAKEOVER)
#else
#define LOCKVAL(c) (((c) & ~SMASK) | LOCKED | stamp)
#define TAKEVAL(c) (((c) & ~SMASK) | stamp)
#endif

#ifdef NO_JUDGE_HAZARD
#define SET_JUDGING(v) skip
#define END_JUDGING skip
#else
#define SET_JUDGING(v) judging[me] = (v)
#define END_JUDGING judging[me] = 0
#endif

/* The structure-lock word of a new acquisition: a fresh sequence. */
#define NEW_SWORD \
  fv = 0; do :: SW_HELD(SWORD(me + 1, fv)) -> fv++ :: else -> break od; \
  assert(fv < 32); slock = SWORD(me + 1, fv); fv = 0

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
    :: wake_seq[le] == cur_seen[me] -> sleeping[me] = le + 1; woke = 1
    :: else -> woke = 0  /* EAGAIN: not a wake-up */
    fi
  };
  if
  :: sleeping[me] == 0 -> skip  /* woken by a FutexWake (woke), or never slept */
  :: deaths > 0 && sleeping[me] != 0 -> sleeping[me] = 0; woke = 0  /* poll tick */
#ifdef GIVEUP
  :: sleeping[me] != 0 -> sleeping[me] = 0; woke = 0                /* deadline */
#endif
  fi
}

/* ---- the entry lock (owner_ops.cc) ---- */

/* ReadLocked: the count is the holder's own (locked_count_). */
inline read_locked(le) {
  d_step {
    rc = lc; rw = waiters[le]; rf = forced[le];
    rlive = ((word[le] & LIVE) != 0)
  }
}

/* WriteLocked: the fields beside the word, the private count, the flags;
   still locked (merged: only the holder writes them). */
inline write_locked(le) {
  d_step {
    waiters[le] = rw; forced[le] = rf; lc = rc;
    word[le] = (word[le] & ~(HW | LIVE)) | (rw > 0 -> HW : 0) | (rlive -> LIVE : 0)
  }
}

/* UnlockUnchanged: the count back into the word in place of the stamp. */
inline unlock_unchanged(le) {
  d_step { word[le] = (word[le] & ~(LOCKED | SMASK)) | lc; believe[me] = 0; lc = 0 };
  in_flight[me] = 0
}

/* Unlock = WriteLocked + UnlockUnchanged, merged (see write_locked). */
inline unlock(le) {
  d_step {
    waiters[le] = rw; forced[le] = rf;
    word[le] = (word[le] & ~(HW | LIVE | LOCKED | SMASK)) | rc |
               (rw > 0 -> HW : 0) | (rlive -> LIVE : 0);
    believe[me] = 0; lc = 0
  };
  in_flight[me] = 0
}

/* ABA_BUG / LOCK_OWNER: the 9877a61 EntryHolderIsDead, a stepwise scan of
   the other owners' in_flight (the load and OwnerIsAlive are one step). */
inline holder_is_dead_scan(le) {
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

/* HolderIsDead(holder hi): publish the judgement (judging), then (seq_cst
   fence) read the holder's identity and judge its process (one step). Sets
   lok when dead, leaving judging set until END_JUDGING after the caller's
   compare-and-swap; when alive, ends the judgement. */
inline holder_is_dead(hi) {
  SET_JUDGING(hi + 1);
  if
  :: !ALIVE_OWNER(hi) -> lok = 1
  :: else -> END_JUDGING; lok = 0
  fi
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

/* RecomputeLocked(e, exclude_self = xself): the live ledger, one owner's cell
   and record per step; dead owners' cells and queue places cleared (and,
   with xself, this record's own: the adopted predecessor's). */
inline recompute(le, xself) {
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
          :: (i == me -> !(xself) : LIVE_PROC(i)) ->
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

/* LockEntry: the stamp (our id, our record's next lock_seq); then load; if
   unlocked, set in_flight and compare-and-swap the stamp in; if locked by
   our own id (a dead predecessor on this record), take over at once; else
   spin until the word changes (modelled as blocking on it), or, now and
   then, judge the holder the word names and, if dead, take the lock over
   with a compare-and-swap against the word read at the top. */
inline lock_entry(le) {
#if defined(ABA_BUG)
  skip;
#elif defined(LOCK_OWNER)
  stamp = STAMP(me + 1, 0);
#else
  d_step { lseq[me] = (lseq[me] + 1) % SEQMOD; stamp = STAMP(me + 1, lseq[me]) };
#endif
  do
  :: atomic { cur_w[me] = word[le]; cur_e[me] = le + 1 };
     if
     :: !(cur_w[me] & LOCKED) ->
        in_flight[me] = le + 1;
        atomic {
          if
          :: word[le] == cur_w[me] ->
             word[le] = LOCKVAL(cur_w[me]); lc = CNT(cur_w[me]);
             assert(!OTHERS_HOLD(le));  /* one believed holder per lock */
             believe[me] = le + 1; lok = 1
          :: else -> lok = 0
          fi
        };
        if
        :: lok -> break
        :: else -> d_step { cur_w[me] = 0; cur_e[me] = 0 }; in_flight[me] = 0
        fi
     :: else ->
#ifdef SCAN_JUDGE
        if
        :: word[le] != cur_w[me] -> lok = 0
        :: RECLAIMING ->
           holder_is_dead_scan(le);
           lok = isdead; isdead = 0
        fi;
#else
        if
        :: HOLDER(cur_w[me]) == me + 1 -> lok = 1  /* ours: left by a dead predecessor */
        :: else ->
           if
           :: word[le] != cur_w[me] -> lok = 0
           :: RECLAIMING -> holder_is_dead(HOLDER(cur_w[me]) - 1)
           fi
        fi;
#endif
        if
        :: lok ->
           lok = 0;
           in_flight[me] = le + 1;
           atomic {
             if
             :: word[le] == cur_w[me] ->
                word[le] = TAKEVAL(cur_w[me]);
                assert(!OTHERS_HOLD(le));  /* one believed holder per lock */
                believe[me] = le + 1; tok = 1
             :: else -> tok = 0
             fi;
             cur_w[me] = 0; cur_e[me] = 0
           };
           END_JUDGING;
           if
           :: tok ->
              tok = 0;
              recompute(le, 0);
              write_locked(le);
              bump_wake_seq(le);
              futex_wake_all(le);
              break
           :: else -> in_flight[me] = 0
           fi
        :: else -> d_step { cur_w[me] = 0; cur_e[me] = 0 }
        fi
     fi
  od;
  /* the jump target of the loop's breaks */
  atomic { cur_w[me] = 0; cur_e[me] = 0; lok = 0; tok = 0; stamp = 0; rc = 0; rw = 0; rf = 0; rlive = 0 }
}

/* ---- the structure lock ---- */

inline unlock_structure() {
  d_step { slock = 0; sbelieve[me] = 0 }
}

/* RetireLocked: wait out a hot-path release still writing its cell, then
   free the entry with a new tag. Only a dead process's hold may be left on
   it (a dead owner's, or the predecessor's on a record being adopted). */
inline retire(le) {
  await_in_flight(le);
  d_step {
    i = 0;
    do
    :: i < N ->
       assert(hold[i * E + le] == 0 || adopting[i] || (i != me && !LIVE_PROC(i)));
       hold[i * E + le] = 0; fhold[i * E + le] = 0; i++
    :: else -> break
    od;
    i = 0;
    in_use[le] = 0;
    fv = 0;
    do :: TAG_HELD(le, fv) -> fv++ :: else -> break od;
    assert(fv < 16);
    word[le] = (word[le] & ~TMASK) | (fv << TSHIFT);
    fv = 0
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

/* LockStructure: compare-and-swap 0 -> a fresh word of ours (load and CAS
   merged); else take over a word naming our own id at once (a dead
   predecessor's), wait for a change, or judge the holder the word names
   and take the lock over from a dead one, then repair. */
inline lock_structure() {
  do
  :: atomic {
       if
       :: slock == 0 ->
          NEW_SWORD; assert(!OTHERS_SHOLD); sbelieve[me] = 1; sok = 1
       :: else -> scur[me] = slock; sok = 0
       fi
     };
     if
     :: sok -> break
     :: else ->
        if
        :: SOWNER(scur[me]) == me + 1 -> lok = 1  /* ours */
        :: else ->
           if
           :: slock != scur[me] -> lok = 0
           :: RECLAIMING -> holder_is_dead(SOWNER(scur[me]) - 1)
           fi
        fi;
        if
        :: lok ->
           lok = 0;
           atomic {
             if
             :: slock == scur[me] ->
                NEW_SWORD; assert(!OTHERS_SHOLD); sbelieve[me] = 1; sok = 1
             :: else -> sok = 0
             fi;
             scur[me] = 0
           };
           END_JUDGING;
           if
           :: sok -> repair_index(); break
           :: else -> skip
           fi
        :: else -> scur[me] = 0
        fi
     fi
  od;
  sok = 0
}

/* FindLive, then FindOrInsert under the structure lock: revive the key's
   zombie, or allocate an entry (AllocateEntryLocked: a free one, else drop
   a zombie) with a new tag. Leaves `e` locked and found = 1, or found = 0
   when the table is full. */
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
           word[e] = word[e] | LIVE;  /* revive a zombie, under the lock */
           found = 1; unlock_structure()
        :: else -> unlock_unchanged(e)
        fi
     :: else -> skip
     fi;
     if
     :: !found ->
        /* AllocateEntryLocked: in_use changes only under the structure lock */
        d_step {
          e = 0; ee = 0;
          do
          :: ee < E && !in_use[ee] -> e = ee + 1; break
          :: ee < E && in_use[ee] -> ee++
          :: ee == E -> break
          od;
          ee = 0
        };
        if
        :: e == 0 ->  /* every entry in use: drop a zombie and take its place */
           do
           :: ee == E -> break
           :: ee < E && (word[ee] & LIVE) -> ee++
           :: ee < E && !(word[ee] & LIVE) ->
              lock_entry(ee);
              read_locked(ee);
              if
              :: in_use[ee] && !rlive && rc == 0 && rw == 0 ->
                 d_step { if :: idx[ekey[ee]] == ee + 1 -> idx[ekey[ee]] = 0 :: else -> skip fi };
                 retire(ee);
                 unlock_unchanged(ee);
                 e = ee + 1;
                 break
              :: else -> unlock_unchanged(ee); ee++
              fi
           od;
           ee = 0;
           d_step { rc = 0; rw = 0; rf = 0; rlive = 0 }
        :: else -> skip
        fi;
        if
        :: e == 0 -> unlock_structure()  /* table full */
        :: else ->
           e = e - 1;
           lock_entry(e);
           d_step {  /* key, counters, new tag, then the bucket (merged) */
             assert(!(E > 1 && in_use[1 - e] && ekey[1 - e] == fk));  /* one entry per key */
             ekey[e] = fk; in_use[e] = 1; waiters[e] = 0; forced[e] = 0;
             fv = 0;
             do :: TAG_HELD(e, fv) -> fv++ :: else -> break od;
             assert(fv < 16);
             word[e] = (fv << TSHIFT) | LIVE | LOCKED | (word[e] & (TAKEOVER | SMASK));
             fv = 0; lc = 0;
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
    assert(rc <= SMASK);
    assert(in_use[ge] && ekey[ge] == gk);  /* the slot is the key's */
    assert(fz || rc <= LIMIT(gk))          /* count <= limit at a non-forced grant */
  };
  unlock(ge);
  got = 1
}

/* ---- registration and reclamation (counter_table.cc, reclaim.cc) ---- */

/* AwaitJudges: (after a seq_cst fence) for each other owner judging this
   record, wait until it stops or dies. */
inline await_judges() {
#ifndef NO_JUDGE_HAZARD
  i = 0;
  do
  :: i == N -> break
  :: i < N ->
     if
     :: i != me && judging[i] == me + 1 && LIVE_PROC(i) ->
        (judging[i] != me + 1 || !LIVE_PROC(i))
     :: else -> skip
     fi;
     i++
  od;
  i = 0
#else
  skip
#endif
}

/* StartOnFreeRecord */
inline start_on_free_record() {
#ifndef NO_JUDGE_HAZARD
  in_flight[me] = 0;
  judging[me] = 0;
  await_judges()
#else
  skip
#endif
}

/* RecoverRecord(d): d == me when adopting. */
inline recover_record(d) {
  d_step { wif = in_flight[d] };
  if
  :: d == me ->
     in_flight[me] = 0;
#ifndef NO_JUDGE_HAZARD
     judging[me] = 0;
     await_judges()
#else
     skip
#endif
  :: else -> skip
  fi;
  /* the structure lock first, if the dead owner held it (load + CAS merged) */
  atomic {
    if
    :: slock != 0 && SOWNER(slock) == d + 1 ->
       NEW_SWORD; assert(!OTHERS_SHOLD); sbelieve[me] = 1; rok = 1
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
        recompute(e2, d == me);
        bump_wake_seq(e2);
        unlock(e2);
        futex_wake_all(e2);
        d_step { rc = 0; rw = 0; rf = 0; rlive = 0 }
     fi;
     e2++
  od;
  atomic {
    if :: d != me -> in_flight[d] = 0; judging[d] = 0 :: else -> skip fi;
    e2 = 0; wif = 0
  }
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

/* ReclaimDeadOwners: a stepwise scan of the owner records (load and judgement
   merged). The code's RecoverRecord also resumes reclamations the dead owner
   was running; here the scan does, as it finds them, which is the same
   work. */
inline reclaim_dead_owners() {
  r = 0;
  do
  :: r == N -> break
  :: r < N ->
     if
     :: r != me ->
        d_step {
          obs = identity[r];
          isdead = (IS_ALIVE_ID(obs) && dead[r]) ||
                   (obs >= RECL && obs - RECL != me && !ALIVE_OWNER(obs - RECL))
        };
        if
        :: isdead -> isdead = 0; reclaim_owner(r)
        :: else -> skip
        fi
     :: else -> skip
     fi;
     r++
  od;
  atomic { r = 0; obs = 0 }
}

/* RecoverAdoptedRecord: recover this record, then finish the reclamations
   it was running (records reclaimed by our id). */
inline recover_adopted() {
  recover_record(me);
  x = 0;
  do
  :: x == N -> break
  :: x < N ->
     if
     :: x != me && identity[x] == RECL + me ->
        recover_record(x);
        d_step { if :: identity[x] == RECL + me -> identity[x] = FREE :: else -> skip fi }
     :: else -> skip
     fi;
     x++
  od;
  x = 0
}

/* A new process claims record me (RegisterOwner: load and CAS merged) */
#define NEW_PROCESS gen[me]++; identity[me] = ALIVE0 + gen[me]; dead[me] = 0; busy[me] = 1
/* ... adopting it: every record taken, and this one's process dead (or its
   reclaimer dead) */
#define ADOPTABLE (identity[0] != FREE && identity[1] != FREE && identity[2] != FREE && \
  (IS_ALIVE_ID(identity[me]) || (identity[me] >= RECL && !LIVE_PROC(identity[me] - RECL))))

/* ---- acquire and release ---- */

inline try_acquire(k) {
  /* the hot path: a cached entry, unlocked, no waiters, same tag, and live
     or a zombie of the cached key (w == tag), which the CAS revives */
  d_step { e = ce[me * K + k] };
  if
  :: e != 0 ->
     e = e - 1;
     d_step { cur_w[me] = word[e]; cur_e[me] = e + 1 };
     if
     :: (STATE(cur_w[me]) == (LIVE | (ct[me * K + k] << TSHIFT)) ||
         (cur_w[me] & ~TAKEOVER) == (ct[me * K + k] << TSHIFT)) &&
        CNT(cur_w[me]) < LIMIT(k) ->
        in_flight[me] = e + 1;
        atomic {
          if
          :: word[e] == cur_w[me] ->
             word[e] = (cur_w[me] + 1) | LIVE;
             assert(in_use[e] && ekey[e] == k);  /* the slot is the key's */
             assert(CNT(word[e]) <= LIMIT(k));   /* count <= limit at a grant */
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
             tick = (!woke && wake_seq[e] == cur_seen[me]); woke = 0;
             cur_seen[me] = wake_seq[e]
           };
           if
           :: tick ->
              /* A poll tick: wake_seq unchanged and (limits being constant
                 here) the limit too, so no re-check under the lock; only a
                 look for dead owners. */
              tick = 0;
              if :: RECLAIMING -> reclaim_dead_owners() :: else -> skip fi
           :: !tick && !(word[e] & LOCKED) && CNT(word[e]) >= LIMIT(k) ->
              /* Changed, but the word, unlocked, shows no room (the freed
                 slot was taken): sleep again without locking. */
              skip
           :: !tick && ((word[e] & LOCKED) || CNT(word[e]) < LIMIT(k)) ->
              lock_entry(e);
              read_locked(e);
              if
              :: rc < LIMIT(k) -> grant(e, k, 1, 0); break  /* only queued waiters compete */
              :: else -> unlock_unchanged(e); d_step { rc = 0; rw = 0; rf = 0; rlive = 0 }
              fi
           fi
        od;
        if
        :: gave ->  /* LeaveQueue, passing a consumed wake-up on */
           lock_entry(e);
           read_locked(e);
           d_step {
             rw--; waiting_on[me] = 0; pass = (rw > 0);
             if :: rc == 0 && rw == 0 -> rlive = 0 :: else -> skip fi  /* a zombie now */
           };
           if :: pass -> bump_wake_seq(e) :: else -> skip fi;
           unlock(e);
           if :: pass -> futex_wake_one(e) :: else -> skip fi
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
    wake = (rw > 0);
    if :: rc == 0 && !wake -> rlive = 0 :: else -> skip fi  /* a zombie */
  };
  d_step {
    hold[me * E + le] = h - 1;
    if :: fz -> fhold[me * E + le]-- :: else -> skip fi
  };
  if :: wake -> bump_wake_seq(le) :: else -> skip fi;
  unlock(le);
  if :: wake -> futex_wake_one(le) :: else -> skip fi
}

inline release(le) {
  if
  :: hold[me * E + le] > fhold[me * E + le] -> fz = 0  /* a connection slot */
  :: fhold[me * E + le] > 0 -> fz = 1                  /* a forced slot */
  fi;
  if
  :: !fz ->  /* the hot path; the last slot leaves a zombie (kLive off) */
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
        :: got -> hold[me * E + le] = h - 1; in_flight[me] = 0
        :: else -> in_flight[me] = 0
        fi
     :: else -> d_step { cur_w[me] = 0; cur_e[me] = 0 }
     fi
  :: else -> skip
  fi;
  if
  :: !got -> release_slow(le, fz)
  :: else -> skip
  fi
}

#if E == 1
#define HOLDS_NOTHING (hold[me * E + 0] == 0)
#else
#define HOLDS_NOTHING (hold[me * E + 0] == 0 && hold[me * E + 1] == 0)
#endif

proctype Owner(byte me) {
  byte e, k, i, r, x, ee, e2, obs, fv, rc, rw, rf, lc, h, wif, ops, stamp;
  bit found, got, lok, tok, sok, rok, isdead, rlive, zom, wake, pass, gave, tick, fz, woke;
  bit adopt, fresh;
  do
  :: {
       /* a new process: recover or start on its record first */
       if
       :: adopt -> recover_adopted()
       :: fresh -> start_on_free_record(); if :: reclaim_dead_owners() :: skip fi
       :: else -> skip
       fi;
       d_step {
         assert(HOLDS_NOTHING && waiting_on[me] == 0 && in_flight[me] == 0);
         adopt = 0; fresh = 0; adopting[me] = 0; busy[me] = 0
       };
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
#if E > 1
       :: atomic { hold[me * E + 1] > 0 -> busy[me] = 1; e = 1 };
          release(e);
          d_step { e = 0; got = 0; rc = 0; rw = 0; rf = 0; rlive = 0; h = 0; zom = 0; wake = 0; fz = 0; busy[me] = 0 }
#endif
       :: atomic { ops == OPS && HOLDS_NOTHING -> done[me] = 1; break }
       od
     } unless {
       atomic {
         dead[me] ->
         /* what dies with the process: its stack, its cache, its beliefs */
         sleeping[me] = 0; cur_w[me] = 0; cur_e[me] = 0; scur[me] = 0; cur_seen[me] = 0;
         seen_e[me] = 0; believe[me] = 0; sbelieve[me] = 0; adopting[me] = 0;
         ce[me * K + 0] = 0; ct[me * K + 0] = 0; ce[me * K + 1] = 0; ct[me * K + 1] = 0;
         e = 0; k = 0; i = 0; r = 0; x = 0; ee = 0; e2 = 0; obs = 0; fv = 0; rc = 0; rw = 0;
         rf = 0; lc = 0; h = 0; wif = 0; ops = 0; stamp = 0; found = 0; got = 0; lok = 0;
         tok = 0; sok = 0; rok = 0; isdead = 0; rlive = 0; zom = 0; wake = 0; pass = 0;
         gave = 0; tick = 0; fz = 0; woke = 0; adopt = 0; fresh = 0
       }
     };
     if
     :: done[me] -> break
     :: else -> skip
     fi;
     /* RegisterOwner by a new process: a free record, or adoption */
end_dead:
     if
     :: atomic { identity[me] == FREE -> NEW_PROCESS; fresh = 1 }
     :: atomic { ADOPTABLE -> NEW_PROCESS; adopt = 1; adopting[me] = 1 }
     fi
  od
}

/* SIGKILL: any process that has not finished, at any step, up to MAXDEATH. */
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
#if E == 1
#define AUDIT_OK (BALANCED(0) && slock == 0)
#else
#define AUDIT_OK (BALANCED(0) && BALANCED(1) && slock == 0)
#endif

active proctype Monitor() {
end_monitor:
  atomic { QUIESCENT && !AUDIT_OK -> assert(false) }
}

init {
  atomic {
    identity[0] = ALIVE0; identity[1] = ALIVE0; identity[2] = ALIVE0;
    run Owner(0); run Owner(1); run Owner(2)
  }
}

/* No lost wake-up: a live queued waiter leaves the queue (is granted a slot,
   or gives up). Checked with weak fairness (pan -a -f). */
#define Q(o) (waiting_on[o] != 0 && !dead[o])
ltl no_lost_wakeup { [] ((Q(0) -> <> !Q(0)) && (Q(1) -> <> !Q(1)) && (Q(2) -> <> !Q(2))) }
