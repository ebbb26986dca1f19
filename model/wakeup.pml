/*
 * wakeup.pml — a Promela model of issue 27's hand-off (docs/shared-pool.md,
 * "Issue 27, as planned"): backends wake the pool's thread themselves
 * through one eventfd and a `pending` bitmap, and the pool's thread serves
 * the slots. It checks that no wake-up is lost: no submitted request stays
 * unserved while the pool's thread sleeps in poll() — with the eventfd
 * alone, no 100 ms sweep — and that a request is taken at most once when
 * the main thread's sweep serves beside the pool's thread.
 * See model/README.md ("wakeup.pml") and model/check.sh.
 *
 * Compile-time switches (spin -D...):
 *   (default)        the plan: backend sets its bit (fetch_or, a full
 *                    barrier), then writes 1 to the eventfd; the pool's
 *                    thread reads (drains) the eventfd, then exchanges the
 *                    bitmap with 0, then takes each slot whose bit it got
 *                    with a compare-and-swap kSubmitted -> kRunning.
 *                    (The code makes the take atomic another way: both
 *                    servers hold one mutex, `serving` in communicator.cc,
 *                    from reading the slot's state to storing kRunning, so
 *                    a load-then-store under it is this CAS. The mutex also
 *                    covers the withdrawal's store kSubmitted -> kFree,
 *                    which a CAS on the state alone could not tell from the
 *                    slot's next request: ABA.)
 *   NB=n             backends, each with its own slot (2 or 3; default 2)
 *   REQS=n           requests each backend submits in a row (default 2)
 *   SWEEP            also the main thread's sweep (ServeAll): a second
 *                    server that may take any submitted slot at any time.
 *                    Left out by default: the main property is checked
 *                    with the eventfd alone.
 *   BUG_EXCHANGE_BEFORE_READ  the pool exchanges the bitmap BEFORE it reads
 *                    the eventfd: a bit set after the exchange whose write
 *                    comes before the read is lost (must be refuted).
 *   BUG_WRITE_BEFORE_BIT  the backend writes the eventfd BEFORE it sets its
 *                    bit: the pool may read and exchange in between (must
 *                    be refuted).
 *   BUG_NO_CAS       (with SWEEP) the take is a load, then a store, not a
 *                    compare-and-swap: both servers may take one request
 *                    (must be refuted).
 *
 * Properties:
 *   - no invalid end state: every backend ends after its REQS requests; the
 *     pool's thread blocked in poll (and the sweep with nothing submitted)
 *     are valid ends. A backend waiting for kDone for ever while the pool
 *     sleeps is an invalid end state (spin's deadlock check). Every run of
 *     the model is finite (REQS bounds the writes; each turn of the pool
 *     consumes a write or answers a request), so this is also "every
 *     request is answered".
 *   - assert SLEEPS_OK as the pool's thread goes back to poll(): if the
 *     eventfd is not readable, no slot is kSubmitted whose backend has
 *     already written for it (a request that nothing will wake the pool for
 *     again). Exact: only the pool's read lowers `efd`, and a backend's
 *     write raises it, so the condition can become false only by the
 *     pool's own return to poll.
 *   - a request is taken (kSubmitted -> kRunning) at most once, answered
 *     only while kRunning, and its backend sees it answered exactly once.
 *
 * MAPPING (model step -> code; the code of issue 27 as planned and as
 * being built: src/pg/communicator.cc, src/executor/pool_loop.cc). Every
 * statement or atomic/d_step below is one step of the code.
 *   Backend           communicator.cc OpsSubmit (the request, request_id,
 *                     write barrier, state = kSubmitted), MarkPending
 *                     (pg_atomic_fetch_or_u64 on the bitmap word: a full
 *                     barrier), WakeCommunicator (write(wake_fd, 1)),
 *                     OpsAwait (the latch wait until kDone), OpsClaim
 *                     (kDone -> kFree before the next request)
 *   Pool, poll        pool_loop.cc: poll() on the eventfd and the
 *                     connections' sockets; `ev` is the eventfd's revents
 *   read_efd          pool_loop.cc SharedPool::Loop::ServeExternal's
 *                     read(fd): the counter, reset to 0 (EFD_NONBLOCK:
 *                     EAGAIN when 0)
 *   exchange          communicator.cc ServePending: pg_atomic_exchange_u64
 *                     of the bitmap's word with 0 (one word: NB <= 3 slots;
 *                     the code's words are exchanged one by one, each bit
 *                     still followed by its write)
 *   take              communicator.cc ServeSlot: kSubmitted -> kRunning
 *                     (a compare-and-swap in the plan)
 *   answer            communicator.cc AnswerSlot/Answer (write barrier,
 *                     kDone, SetLatch of the backend), on the pool's thread
 *                     when the request's tasks settle (a socket readable at
 *                     a later poll: `owed`)
 *   Sweep             communicator.cc ServeAll on the main thread (100 ms)
 *
 * Not modelled: Withdraw and OpsMore (they set the bit and write the same
 * way as OpsSubmit), kMore, epochs and restarts, the latch fallback without
 * an eventfd, the pool's own eventfd (new batches, cancels).
 */

#ifndef NB
#define NB 2
#endif
#ifndef REQS
#define REQS 2
#endif
#if NB < 2 || NB > 3
#error "NB is 2 or 3"
#endif

/* Slot::state */
#define FREE 0
#define SUBMITTED 1
#define RUNNING 2
#define DONE 3

/* ---- shared state ---- */
byte efd;            /* the eventfd's counter (Header::wake_fd) */
byte pending;        /* the pending bitmap's word: bit i = slot i */
byte state[NB];      /* Slot::state */

/* ---- observers ---- */
byte takes[NB];      /* takes of the slot's current request */
bit  wrote[NB];      /* the current request's eventfd write has been made */

/* A request the backend has written for that nobody has taken. */
#define UNSEEN(i) (state[i] == SUBMITTED && wrote[i])
#if NB == 3
#define NONE_UNSEEN (!UNSEEN(0) && !UNSEEN(1) && !UNSEEN(2))
#define SOME_SUBMITTED (state[0] == SUBMITTED || state[1] == SUBMITTED || \
                        state[2] == SUBMITTED)
#else
#define NONE_UNSEEN (!UNSEEN(0) && !UNSEEN(1))
#define SOME_SUBMITTED (state[0] == SUBMITTED || state[1] == SUBMITTED)
#endif
/* The pool may sleep: the eventfd is readable, or nothing is lost. */
#define SLEEPS_OK (efd > 0 || NONE_UNSEEN)

/* read(wake_fd): the counter, reset to 0; EAGAIN when it is 0. */
inline read_efd() {
  d_step {
    if
    :: efd > 0 -> efd = 0
    :: else -> skip  /* EAGAIN */
    fi
  }
}

/* ServePending's exchange of the bitmap word with 0. */
inline exchange() {
  d_step { taken = pending; pending = 0 }
}

/* ServeSlot's kSubmitted -> kRunning: ok = 1 when this server took it. */
inline take(i) {
#ifdef BUG_NO_CAS
  /* a load, then a store */
  ok = (state[i] == SUBMITTED);
  if
  :: ok -> d_step { state[i] = RUNNING; takes[i]++; assert(takes[i] <= 1) }
  :: else -> skip
  fi
#else
  d_step {
    if
    :: state[i] == SUBMITTED ->
       state[i] = RUNNING; takes[i]++; assert(takes[i] <= 1); ok = 1
    :: else -> ok = 0
    fi
  }
#endif
}

/* Answer: the response, then kDone (and SetLatch). */
inline answer(i) {
  d_step { assert(state[i] == RUNNING); state[i] = DONE }
}

proctype Backend(byte me) {
  byte n;
  do
  :: n < REQS ->
     /* OpsSubmit: the request (request_id + 1) into the slot's area */
     d_step { takes[me] = 0; wrote[me] = 0 };
     state[me] = SUBMITTED;                 /* write barrier, then the store */
#ifdef BUG_WRITE_BEFORE_BIT
     d_step { efd++; wrote[me] = 1 };       /* WakeCommunicator, too early */
     pending = pending | (1 << me);         /* MarkPending */
#else
     pending = pending | (1 << me);         /* MarkPending: fetch_or */
     d_step { efd++; wrote[me] = 1 };       /* WakeCommunicator: write(fd, 1) */
#endif
     state[me] == DONE;                     /* OpsAwait: the latch wait */
     assert(takes[me] == 1);
     state[me] = FREE;                      /* OpsClaim of the next request */
     n++
  :: else -> break
  od
}

/* The pool's thread. `owed`: requests it took and has not answered yet
   (their tasks run on the connections; a later poll reports a socket).
   Each turn reads a write (ev) or answers a request (sock): every run of
   the model is finite. */
active proctype Pool() {
  byte taken, owed, i;
  bit ev, sock, ok;
end_poll:
  do
  :: atomic {                                /* poll() returns */
       (efd > 0 || owed != 0) -> ev = (efd > 0); sock = (owed != 0)
     };
     if
     :: ev ->
        /* ServeExternal: drain, then serve */
#ifdef BUG_EXCHANGE_BEFORE_READ
        exchange();
        read_efd();
#else
        read_efd();
        exchange();
#endif
        i = 0;
        do
        :: i == NB -> break
        :: i < NB && (taken & (1 << i)) != 0 ->
           take(i);
           if
           :: ok -> owed = owed | (1 << i)
           :: else -> skip
           fi;
           i++
        :: i < NB && (taken & (1 << i)) == 0 -> i++
        od
     :: else -> skip
     fi;
     /* a connection's socket was readable: one request's tasks settled
        (any taken one, including one taken in this turn) */
     if
     :: sock && (owed & 1) != 0 -> answer(0); owed = owed & ~1
     :: sock && (owed & 2) != 0 -> answer(1); owed = owed & ~2
#if NB == 3
     :: sock && (owed & 4) != 0 -> answer(2); owed = owed & ~4
#endif
     :: !sock -> skip
     fi;
     d_step { taken = 0; i = 0; ok = 0; ev = 0; sock = 0 };
     /* back to poll(): it may sleep */
     assert(SLEEPS_OK)
  od
}

#ifdef SWEEP
/* The main thread's sweep (ServeAll): takes any submitted slot and answers
   it. The guard and the take are separate steps, so it races the pool's
   thread for the slot. */
inline sweep_slot(i) {
  take(i);
  if
  :: ok -> answer(i)
  :: else -> skip
  fi;
  ok = 0
}

active proctype Sweep() {
  bit ok;
end_sweep:
  do
  :: state[0] == SUBMITTED -> sweep_slot(0)
  :: state[1] == SUBMITTED -> sweep_slot(1)
#if NB == 3
  :: state[2] == SUBMITTED -> sweep_slot(2)
#endif
  od
}
#endif

init {
  atomic {
    run Backend(0); run Backend(1);
#if NB == 3
    run Backend(2)
#endif
  }
}
