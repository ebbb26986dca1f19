/*
 * lease.pml — a Promela model of issue 28's lease protocol (docs/budget.md,
 * Part B: "Two layers", "Actors and messages", "Clocks and the deadline",
 * "The worker's accounting and the strict bound", "The coordinator's side",
 * "Restart, death, partition"; checks listed under "What the models must
 * check", Part B). One worker with a budget B of coordinator data
 * connections; two coordinators that lease slots of it and open, use and
 * close data connections, and that may die, be cut off or stall (pause) at
 * any step; lease requests and replies that may be delayed (while time
 * passes) or lost; a worker that may restart at any step.
 * See model/README.md ("The lease model") and model/check-lease.sh.
 *
 * Compile-time switches (spin -D...):
 *   (default)        the design: admission checks live_c < cap_c and
 *                    Σ live < B and records the backend in one step; a grant
 *                    is any g <= B - Σ_{o≠c} res_o (the fair-share rule is
 *                    abstracted: every rule that keeps the bound is one of
 *                    these choices); G_c = {the grant the request
 *                    acknowledges, the latest}; a grant ends D after the
 *                    request arrived; the ghosts of a coordinator whose
 *                    every grant has ended are ended; the coordinator's
 *                    deadline is t_s + D - m with t_s read before it sends;
 *                    after a failed connection it is in `verify` until the
 *                    reply to a request sent since.
 *   B=n              the budget (default 2)
 *   NC=n             connection slots per coordinator (2 or 3; default 2);
 *                    opens and closes are unbounded, the slots bound how
 *                    many connections a coordinator has at once
 *   MAXREQ=n         lease requests of coordinator 0 (default 2)
 *   MAXREQ1=n        lease requests of coordinator 1 (default MAXREQ)
 *   MAXRESTART=n     worker restarts (default 1)
 *   MAXLOSS=n        lease messages lost, requests or replies (default 1)
 *   MAXDEATH=n       coordinator deaths (default 1)
 *   MAXCUT=n         coordinators cut off (default 1; a death with the host
 *                    lost takes one of each)
 *   NO_GLOBAL_CHECK  admission without Σ live < B: the leases alone
 *   NO_LEASE_CHECK   admission without live_c < cap_c: the global check alone
 *   ROGUE            coordinator 1 opens connections whenever a slot is free,
 *                    lease or not (an older, buggy or misconfigured one):
 *                    P1 must hold all the same; P3 is not asked of it
 *   NO_P2, NO_P3     P2, P3 not asserted (runs that check the others alone)
 *   Findings (docs/budget.md as worded; each must be refuted):
 *   G_PREVIOUS       G_c = {g_k, g_{k-1}}, "g_{k-1} until request k+1
 *                    arrives", whatever the request acknowledges: after a
 *                    lost reply the grant the coordinator holds is dropped
 *                    while it uses it: P3
 *   VERIFY_ANY_REPLY `verify` ends at any reply, one to a request sent before
 *                    the failure too: the coordinator opens under the dead
 *                    instance's grant: P3
 *   CLOSE_RACE       a close travels (Net delivers it), and P3 is asked of an
 *                    attempt that overtakes the close of the coordinator's
 *                    previous connection: the hook does not wait for a
 *                    backend whose close has not arrived: P3
 *   Mutants (docs/budget.md's list; each must be refuted):
 *   BUG_DEADLINE_FROM_REPLY  the coordinator's deadline counted from the
 *                    reply (t_r + D - m): P2 (and P3)
 *   BUG_SHRINK_AT_ONCE  a grant drops the earlier one at once (G_c = {g_k+1}):
 *                    P3
 *   BUG_FORGET_GHOSTS  a record whose grants all ended reserves nothing,
 *                    though its ghosts are live (res_c = 0): P1 under
 *                    NO_GLOBAL_CHECK
 *   BUG_ADMIT_THEN_RECORD  the hook checks, then records in a later step: P1
 *   BUG_IGNORE_INSTANCE  no `verify`: after a failed connection the
 *                    coordinator opens under its old lease: P3
 *   BUG_NO_GHOST_END  the worker never ends ghosts: share_back
 *
 * Properties:
 *   P1  Σ live <= B: asserted at every admission. Only an admission raises
 *       Σ live, so it holds in every state.
 *   P2  the worker ends a coordinator's backends (ghost_end) only when the
 *       coordinator is dead or its deadline, for the latest reply it read,
 *       has passed.
 *   P3  an attempt within a lease is admitted: asserted at every refusal.
 *       Within a lease: at the hook's decision the coordinator is alive and
 *       still wants the connection, its deadline has not passed, its
 *       connections (this one included) are not above its grant, the grant
 *       is of the deciding worker instance or the coordinator had seen a
 *       failed connection (a restart's sign) when it opened, and every close
 *       it sent earlier has reached the worker ("arriving in time").
 *   Hang: no hook waits for ever (asserted when nothing else can move).
 *   no invalid end state.
 *   ltl share_back (pan -a -f): a dead or cut-off coordinator's res reaches 0.
 *
 * Time: one tick clock for both sides (equal rates; a rate error ρ is the
 * arithmetic of "Clocks and the deadline"). Absolute times are countdowns,
 * so time runs for ever in a finite state space: a grant's end t_w + D is
 * el/ea = D at lease_renew; the coordinator's t_s is age, the ticks since it
 * sent (at most D - m), and its deadline t_s + D - m is dl = D - m - age at
 * the reply. The clock ticks only while a countdown runs. D = 4, m = 1.
 *
 * MAPPING (model step -> design, and code where it exists). Every atomic or
 * d_step is one step: under the worker's lease LWLock, or one action of
 * the coordinator's lease holder or connection.
 *   Worker renew       lease_renew: src/core/lease_table.cc LeaseTable::Renew
 *                      (held := pending when the request acknowledges it;
 *                      pending := the new grant, ending now + D)
 *   Worker hook        src/pg/admission.cc Authenticate -> LeaseTable::Admit
 *                      (check and record under the lock); the wait for an
 *                      exiting backend of the same coordinator ("The worker's
 *                      accounting", 100 ms, assumed long enough); 53300
 *   Worker gone        admission.cc ReleaseAdmission -> LeaseTable::Gone
 *   Worker ghost_end   the lease manager (src/pg/lease_manager.cc):
 *                      LeaseTable::Expire, then SIGTERM
 *   Worker restart     the worker restarts: every backend ends, an empty
 *                      table, a new instance
 *   Net                a lease request or reply lost (its connection breaks);
 *                      with CLOSE_RACE, a close (FIN) reaching the backend
 *   Coord send         the lease holder (src/executor/lease_holder.cc, to
 *                      come): t_s := now, then the request (seq, acked, the
 *                      instance seen)
 *   Coord give_up      the reply timeout: the lease connection is replaced;
 *                      a reply on the old one is never read
 *   Coord read         the reply: limit := g, deadline := t_s + D - m,
 *                      verify left if no failure was seen since the send
 *   Coord open, close  Limit::ForNode = min(max_shared_pool_size, lease),
 *                      the deadline checked at each acquire
 *   Coord see_failed   a failed connection (restart, SIGTERM): verify
 *   Coord lapse        at the deadline: idle and running connections closed,
 *                      connects in flight given up
 *   Coord die, cut     SIGKILL (the kernel closes the sockets); the host lost
 *                      (nothing reaches the worker any more); a partition
 *   Clock              CLOCK_BOOTTIME on both sides
 */

#ifndef B
#define B 2
#endif
#define D 4
#define M 1
#ifndef NC
#define NC 2
#endif
#ifndef MAXREQ
#define MAXREQ 2
#endif
#ifndef MAXREQ1
#define MAXREQ1 MAXREQ
#endif
#ifndef MAXRESTART
#define MAXRESTART 1
#endif
#ifndef MAXLOSS
#define MAXLOSS 1
#endif
#ifndef MAXDEATH
#define MAXDEATH 1
#endif
#ifndef MAXCUT
#define MAXCUT 1
#endif
#if NC < 2 || NC > 3
#error "NC is 2 or 3"
#endif
#define NS (2 * NC)  /* slots: coordinator c's are c*NC .. c*NC+NC-1 */
#define C(s) ((s) / NC)
#define MAXREQ_C(c) ((c) == 0 -> MAXREQ : MAXREQ1)

/* A data connection slot: the coordinator's connection and the worker's
   backend together. "counts": the coordinator counts it against its lease;
   "live": the worker counts it in live_c. */
#define FREE 0       /* no connection */
#define SENT 1       /* connect in flight (counts) */
#define ARRIVED 2    /* in the worker's hook, waiting (counts) */
#define CHECKED 3    /* BUG_ADMIT_THEN_RECORD: passed the check, not recorded (counts) */
#define OPEN 4       /* admitted, in use (counts, live) */
#define FAILED 5     /* ended by the worker (SIGTERM, restart), not yet seen (counts) */
#define CLOSING 6    /* closed, the close not at the worker (live): a ghost if cut off */
#define EXITING 7    /* the close arrived: the backend exits (live) */

/* ---- the worker ---- */
byte inst;                  /* its instance */
byte live[2];               /* live_c: c's data backends admitted and not gone */
byte gl[2], el[2], nl[2];   /* latest grant ("pending"): value, ticks to its end, seq */
byte ga[2], ea[2], na[2];   /* the acknowledged one ("held"): value, ticks left, seq */
/* An ended grant is (0, 0, 0): G_c is the grants with ticks left. */

/* ---- lease messages: a request and a reply in flight per coordinator ---- */
bit  rq[2];                 /* a request in flight; its seq is seq[c] */
byte rq_ack[2];             /* acked: the seq of the last reply the coordinator read */
byte rq_inst[2];            /* the instance seen: that reply's */
bit  rp[2];                 /* the reply to the coordinator's last request */
byte rp_g[2], rp_inst[2];

/* ---- the coordinators ---- */
bit  alive[2], cut[2];
byte lg[2];                 /* its lease: the grant (node limit); 0 once lapsed */
byte dl[2];                 /* ticks to its deadline; 0: lapsed */
byte linst[2];              /* the instance that granted it */
byte ack[2];                /* the seq of the reply it read last */
byte seq[2];                /* the seq of its last request */
byte sent[2];               /* requests sent */
bit  waiting[2];            /* a request outstanding */
byte age[2];                /* ticks since it was sent (now - t_s), at most D - M */
bit  vf[2];                 /* verify: a failed connection seen since its lease's request */
bit  fss[2];                /* a failed connection seen since the outstanding request */
#ifdef VERIFY_ANY_REPLY
bit  vany[2];               /* verify as VERIFY_ANY_REPLY leaves it */
#endif

/* ---- data connection slots (sorted per coordinator: canon) ---- */
byte cs[NS];                /* the state */
bit  ab[NS];                /* a connect given up by the coordinator (lapse, death) */
bit  afail[NS];             /* opened in verify (only BUG_IGNORE_INSTANCE does) */

/* ---- fault budgets ---- */
byte restarts, losses, deaths, cuts;

/* ---- property observers: set and asserted false in the same step ---- */
bit over_budget;            /* P1 */
bit ended_in_use;           /* P2 */
bit refused_within_lease;   /* P3 */
bit hook_waits_for_ever;    /* Hang */

#define MAX(a, b) ((a) > (b) -> (a) : (b))
#define CAP(c) MAX(gl[c], ga[c])          /* cap_c = max(G_c ∪ {0}) */
#define LEASED(c) (el[c] > 0 || ea[c] > 0)
#ifdef BUG_FORGET_GHOSTS
#define RES(c) (LEASED(c) -> MAX(live[c], CAP(c)) : 0)
#else
#define RES(c) MAX(live[c], CAP(c))       /* res_c */
#endif
/* res_c == 0, without conditional expressions (for the ltl formula) */
#define RESZERO(c) (live[c] == 0 && gl[c] == 0 && ga[c] == 0)

#ifdef NO_LEASE_CHECK
#define LEASE_OK(c) 1
#else
#define LEASE_OK(c) (live[c] < CAP(c))
#endif
#ifdef NO_GLOBAL_CHECK
#define GLOBAL_OK 1
#else
#define GLOBAL_OK (live[0] + live[1] < B)
#endif
#define ADMITS(c) (LEASE_OK(c) && GLOBAL_OK)

#define ATTEMPT(s) ((cs[s] == SENT || cs[s] == ARRIVED || cs[s] == CHECKED) && !ab[s])
#define COUNTS(s) (cs[s] == OPEN || cs[s] == FAILED || ATTEMPT(s))
#define IN_USE(s) (cs[s] == OPEN || ATTEMPT(s))
#define IS_FREE(s) (cs[s] == FREE)
#define IS_OPEN(s) (cs[s] == OPEN)
#define IS_FAILED(s) (cs[s] == FAILED)
#define IS_ARRIVED(s) (cs[s] == ARRIVED)
#define IS_CHECKED(s) (cs[s] == CHECKED)
#define IS_EXITING(s) (cs[s] == EXITING)
#define IS_CLOSING(s) (cs[s] == CLOSING)
#define N1(x) ((x) -> 1 : 0)
#if NC == 2
#define ANY(c, P) (P((c) * NC) || P((c) * NC + 1))
#define COUNT(c) (N1(COUNTS((c) * NC)) + N1(COUNTS((c) * NC + 1)))
#define EXITING_OF(c) (cs[(c) * NC] == EXITING || cs[(c) * NC + 1] == EXITING)
#else
#define ANY(c, P) (P((c) * NC) || P((c) * NC + 1) || P((c) * NC + 2))
#define COUNT(c) (N1(COUNTS((c) * NC)) + N1(COUNTS((c) * NC + 1)) + N1(COUNTS((c) * NC + 2)))
#define EXITING_OF(c) (cs[(c) * NC] == EXITING || cs[(c) * NC + 1] == EXITING || \
                       cs[(c) * NC + 2] == EXITING)
#endif
#define ANY_SLOT(P) (ANY(0, P) || ANY(1, P))
/* i := any slot satisfying P (one does) */
#if NC == 2
#define PICK(P) if :: P(0) -> i = 0 :: P(1) -> i = 1 :: P(2) -> i = 2 :: P(3) -> i = 3 fi
#else
#define PICK(P) if :: P(0) -> i = 0 :: P(1) -> i = 1 :: P(2) -> i = 2 \
                   :: P(3) -> i = 3 :: P(4) -> i = 4 :: P(5) -> i = 5 fi
#endif
/* i := the first slot of c satisfying P (one does) */
#define FIRST(c, P) i = (c) * NC; do :: P(i) -> break :: else -> i++ od

/* The coordinator closes the connection in slot s. The close reaches the
   backend (EXITING) at once, unless the coordinator is cut off (CLOSING for
   ever: a ghost). A close that arrives late is a backend that exits late,
   which EXITING covers, but for one thing: the hook waits for an exiting
   backend, not for one whose close is still on its way. With CLOSE_RACE
   closes travel (Net delivers them) and P3 is asked of attempts that
   overtake them. */
#ifdef CLOSE_RACE
#define CLOSED(s) cs[s] = CLOSING
#else
#define CLOSED(s) if :: cut[C(s)] -> cs[s] = CLOSING :: else -> cs[s] = EXITING fi
#endif
#define DELIVERABLE(s) (cs[s] == CLOSING && !cut[C(s)])

#ifdef ROGUE
#define ROGUE_C(c) ((c) == 1)
#else
#define ROGUE_C(c) 0
#endif

/* The coordinator is in verify: new connections wait for a reply. */
#if defined(BUG_IGNORE_INSTANCE)
#define VERIFYING(c) 0
#elif defined(VERIFY_ANY_REPLY)
#define VERIFYING(c) vany[c]
#else
#define VERIFYING(c) vf[c]
#endif
/* The lease holder lets a connection be opened (Limit::ForNode, the
   deadline checked at each acquire). */
#define MAY_OPEN(c) (ROGUE_C(c) || (dl[c] > 0 && COUNT(c) < lg[c] && !VERIFYING(c)))

/* P3's premise for the attempt in slot s, at the hook's decision. */
#ifdef CLOSE_RACE
#define CLOSES_ARRIVED(c) 1
#else
#define CLOSES_ARRIVED(c) (!ANY(c, IS_CLOSING))
#endif
#define WITHIN_LEASE(s) (!ab[s] && !ROGUE_C(C(s)) && dl[C(s)] > 0 && \
                         COUNT(C(s)) <= lg[C(s)] && \
                         (linst[C(s)] == inst || afail[s]) && CLOSES_ARRIVED(C(s)))

/* A coordinator's slots are interchangeable: after every step they are
   sorted by (state, ab, afail), so that states that differ only in which
   slot holds which connection are one. */
#define KEY(s) (cs[s] * 4 + ab[s] * 2 + afail[s])
inline order(a, b) {
  if
  :: KEY(a) > KEY(b) ->
     t = cs[a]; cs[a] = cs[b]; cs[b] = t;
     t = ab[a]; ab[a] = ab[b]; ab[b] = t;
     t = afail[a]; afail[a] = afail[b]; afail[b] = t
  :: else -> skip
  fi
}
inline canon() {
  order(0, 1); order(NC, NC + 1);
#if NC == 3
  order(1, 2); order(0, 1);
  order(4, 5); order(3, 4);
#endif
  t = 0
}

/* ---------------------------------------------------------------- */
/* The clock: a tick of CLOCK_BOOTTIME, on both sides (equal rates).  */

#define TIMERS_RUN (dl[0] > 0 || dl[1] > 0 || el[0] > 0 || el[1] > 0 || \
                    ea[0] > 0 || ea[1] > 0 || \
                    (waiting[0] && age[0] < D - M) || (waiting[1] && age[1] < D - M))

inline tick_c(c) {
  if
  :: dl[c] > 1 -> dl[c]--
  :: dl[c] == 1 -> dl[c] = 0; lg[c] = 0                 /* the lease lapses */
  :: else -> skip
  fi;
  if
  :: el[c] > 1 -> el[c]--
  :: el[c] == 1 -> el[c] = 0; gl[c] = 0; nl[c] = 0      /* the grant ends */
  :: else -> skip
  fi;
  if
  :: ea[c] > 1 -> ea[c]--
  :: ea[c] == 1 -> ea[c] = 0; ga[c] = 0; na[c] = 0
  :: else -> skip
  fi;
  if
  :: waiting[c] && age[c] < D - M -> age[c]++
  :: else -> skip
  fi
}

active proctype Clock() {
end_clock:
  do
  :: d_step { TIMERS_RUN -> tick_c(0); tick_c(1);
       printf("MSC: tick: c0 dl %d g %d/%d | c1 dl %d g %d/%d\n",
              dl[0], gl[0], ga[0], dl[1], gl[1], ga[1]) }
  od
}

/* ---------------------------------------------------------------- */
/* The worker.                                                       */

/* lease_renew for c (LeaseTable::Renew): t_w := now. The grant the request
   acknowledges becomes the held one; the new grant g, any value that keeps
   I1 (g <= B - res of the other), counts from now until now + D. */
inline renew(c) {
  mx = (RES(1 - c) < B -> B - RES(1 - c) : 0);
  do
  :: g < mx -> g++
  :: break
  od;
#if defined(BUG_SHRINK_AT_ONCE)
  ga[c] = 0; ea[c] = 0; na[c] = 0;              /* g_k dropped at the grant */
#elif defined(G_PREVIOUS)
  ga[c] = gl[c]; ea[c] = el[c]; na[c] = nl[c];  /* g_k kept, g_k-1 dropped */
#else
  if
  :: rq_inst[c] == inst && rq_ack[c] == nl[c] ->
     ga[c] = gl[c]; ea[c] = el[c]; na[c] = nl[c]   /* held := pending */
  :: rq_inst[c] == inst && rq_ack[c] != nl[c] && rq_ack[c] == na[c] ->
     skip                                          /* it still holds the held one */
  :: else -> ga[c] = 0; ea[c] = 0; na[c] = 0
  fi;
#endif
  gl[c] = g; el[c] = D; nl[c] = seq[c];
  printf("MSC: worker %d: renew c%d seq %d acked %d: grant %d, held %d\n",
         inst, c, seq[c], rq_ack[c], g, ga[c]);
  rq[c] = 0; rq_ack[c] = 0; rq_inst[c] = 0;
  if
  :: waiting[c] && !cut[c] -> rp[c] = 1; rp_g[c] = g; rp_inst[c] = inst
  :: else -> skip   /* the coordinator is gone: nobody reads it */
  fi;
  g = 0; mx = 0
}

/* Admission (LeaseTable::Admit). P1: only an admission raises Σ live. */
inline record(s) {
  live[C(s)]++;
  over_budget = (live[0] + live[1] > B);
  assert(!over_budget);   /* P1 */
  printf("MSC: worker %d: c%d's connect admitted: live %d, %d\n", inst, C(s), live[0], live[1]);
  if
  :: ab[s] -> CLOSED(s); ab[s] = 0; afail[s] = 0  /* the coordinator has closed it */
  :: else -> cs[s] = OPEN
  fi
}

/* The hook decides now: the check passes, or no backend of the same
   coordinator is exiting (else it waits for one: the design's 100 ms). */
#define HOOK_DECIDES(s) (ADMITS(C(s)) || !EXITING_OF(C(s)))
#define ARRIVES_DECIDES(s) (cs[s] == SENT && !cut[C(s)] && HOOK_DECIDES(s))
#define ARRIVES_WAITS(s) (cs[s] == SENT && !cut[C(s)] && !HOOK_DECIDES(s))
#define WAIT_ENDS(s) (cs[s] == ARRIVED && HOOK_DECIDES(s))

inline decide(s) {
  if
  :: ADMITS(C(s)) ->
#ifdef BUG_ADMIT_THEN_RECORD
     cs[s] = CHECKED    /* recorded in a later step */
#else
     record(s)
#endif
  :: else ->
     printf("MSC: worker %d: c%d's connect refused (live %d, %d; cap %d)\n",
            inst, C(s), live[0], live[1], CAP(C(s)));
#ifndef NO_P3
     refused_within_lease = WITHIN_LEASE(s);
     assert(!refused_within_lease);   /* P3 */
#endif
     cs[s] = FREE; ab[s] = 0; afail[s] = 0   /* 53300, seen by the coordinator */
  fi
}

/* The lease manager ends the ghosts of c, every grant of which has ended
   (LeaseTable::Expire, then SIGTERM). P2: c is dead or past its deadline. */
inline ghost_end(c) {
  printf("MSC: worker %d: c%d's grants ended: its %d backends ended\n", inst, c, live[c]);
#ifndef NO_P2
  ended_in_use = (alive[c] && dl[c] > 0);
  assert(!ended_in_use);   /* P2 */
#endif
  i = c * NC;
  do
  :: i < c * NC + NC ->
     if
     :: cs[i] == OPEN -> cs[i] = FAILED
     :: cs[i] == CLOSING || cs[i] == EXITING -> cs[i] = FREE
     :: else -> skip
     fi;
     i++
  :: else -> break
  od;
  live[c] = 0; i = 0
}

/* A restart: every backend ends (those in the hook too), the table is
   empty, a new instance. The lease connections break (requests in flight
   are lost); replies sent before may still arrive; connects in flight
   reach the new instance. */
inline restart() {
  restarts++; inst++;
  printf("MSC: worker restarts: instance %d\n", inst);
  i = 0;
  do
  :: i < NS ->
     if
     :: cs[i] == OPEN -> cs[i] = FAILED
     :: cs[i] == CLOSING || cs[i] == EXITING -> cs[i] = FREE
     :: (cs[i] == ARRIVED || cs[i] == CHECKED) && ab[i] -> cs[i] = FREE; ab[i] = 0; afail[i] = 0
     :: (cs[i] == ARRIVED || cs[i] == CHECKED) && !ab[i] -> cs[i] = FAILED
     :: else -> skip
     fi;
     i++
  :: else -> break
  od;
  i = 0;
  live[0] = 0; live[1] = 0;
  gl[0] = 0; el[0] = 0; nl[0] = 0; ga[0] = 0; ea[0] = 0; na[0] = 0;
  gl[1] = 0; el[1] = 0; nl[1] = 0; ga[1] = 0; ea[1] = 0; na[1] = 0;
  rq[0] = 0; rq_ack[0] = 0; rq_inst[0] = 0;
  rq[1] = 0; rq_ack[1] = 0; rq_inst[1] = 0
}

active proctype Worker() {
  byte g, mx, i, t;
end_worker:
  do
  :: atomic { rq[0] -> renew(0) }
  :: atomic { rq[1] -> renew(1) }
  /* a connect arrives: the hook decides, or waits */
  :: atomic { ANY_SLOT(ARRIVES_DECIDES) -> PICK(ARRIVES_DECIDES); decide(i); i = 0; canon() }
  :: atomic { ANY_SLOT(ARRIVES_WAITS) -> PICK(ARRIVES_WAITS); cs[i] = ARRIVED;
       printf("MSC: worker %d: c%d's connect waits for its exiting backend\n", inst, C(i));
       i = 0; canon() }
  :: atomic { ANY_SLOT(WAIT_ENDS) -> PICK(WAIT_ENDS); decide(i); i = 0; canon() }
#ifdef BUG_ADMIT_THEN_RECORD
  :: atomic { ANY_SLOT(IS_CHECKED) -> PICK(IS_CHECKED); record(i); i = 0; canon() }
#endif
  /* a backend is gone (LeaseTable::Gone) */
  :: atomic { ANY_SLOT(IS_EXITING) -> PICK(IS_EXITING); cs[i] = FREE; live[C(i)]--;
       printf("MSC: worker %d: a backend of c%d is gone\n", inst, C(i));
       i = 0; canon() }
#ifndef BUG_NO_GHOST_END
  :: d_step { !LEASED(0) && live[0] > 0 -> ghost_end(0); canon() }
  :: d_step { !LEASED(1) && live[1] > 0 -> ghost_end(1); canon() }
#endif
  :: d_step { restarts < MAXRESTART -> restart(); canon() }
  od
}

/* ---------------------------------------------------------------- */
/* The network: lost lease messages; with CLOSE_RACE, closes arriving. */

active proctype Net() {
  byte i, t;
end_net:
  do
#ifdef CLOSE_RACE
  :: atomic { ANY_SLOT(DELIVERABLE) -> PICK(DELIVERABLE); cs[i] = EXITING;
       printf("MSC: a close of c%d arrives\n", C(i)); i = 0; canon() }
#endif
  :: d_step { losses < MAXLOSS && rq[0] -> rq[0] = 0; rq_ack[0] = 0; rq_inst[0] = 0; losses++;
       printf("MSC: c0's request lost\n") }
  :: d_step { losses < MAXLOSS && rq[1] -> rq[1] = 0; rq_ack[1] = 0; rq_inst[1] = 0; losses++;
       printf("MSC: c1's request lost\n") }
  :: d_step { losses < MAXLOSS && rp[0] -> rp[0] = 0; rp_g[0] = 0; rp_inst[0] = 0; losses++;
       printf("MSC: c0's reply lost\n") }
  :: d_step { losses < MAXLOSS && rp[1] -> rp[1] = 0; rp_g[1] = 0; rp_inst[1] = 0; losses++;
       printf("MSC: c1's reply lost\n") }
  od
}

/* ---------------------------------------------------------------- */
/* The coordinators: the lease holder and the node's connections.     */

/* The deadline (lapse) and death: connections closed, connects given up. */
inline close_all(c) {
  i = c * NC;
  do
  :: i < c * NC + NC ->
     if
     :: cs[i] == OPEN -> CLOSED(i)
     :: ATTEMPT(i) -> ab[i] = 1
     :: else -> skip
     fi;
     i++
  :: else -> break
  od;
  i = 0
}

/* SIGKILL: the kernel closes the sockets (unless cut off first: host lost). */
inline die(c) {
  deaths++; alive[c] = 0;
  printf("MSC: c%d dies\n", c);
  close_all(c);
  i = c * NC;
  do
  :: i < c * NC + NC ->
     if
     :: cs[i] == FAILED -> cs[i] = FREE; afail[i] = 0
     :: else -> skip
     fi;
     i++
  :: else -> break
  od;
  i = 0;
  waiting[c] = 0; age[c] = 0; rp[c] = 0; rp_g[c] = 0; rp_inst[c] = 0;
  lg[c] = 0; dl[c] = 0; linst[c] = 0; ack[c] = 0; vf[c] = 0; fss[c] = 0
}

/* Cut off: nothing reaches the worker or comes back any more. */
inline cut_off(c) {
  cuts++; cut[c] = 1;
  printf("MSC: c%d is cut off\n", c);
  rq[c] = 0; rq_ack[c] = 0; rq_inst[c] = 0;
  rp[c] = 0; rp_g[c] = 0; rp_inst[c] = 0
}

proctype Coord(byte me) {
  byte i, t;
end_coord:
  do
  :: d_step {   /* send: t_s := now, then the request */
       !waiting[me] && sent[me] < MAXREQ_C(me) ->
       sent[me]++; seq[me] = sent[me];
       waiting[me] = 1; age[me] = 0; fss[me] = 0;
       printf("MSC: c%d sends request %d (acked %d of instance %d)\n", me, seq[me], ack[me], linst[me]);
       if
       :: !cut[me] -> rq[me] = 1; rq_ack[me] = ack[me]; rq_inst[me] = linst[me]
       :: else -> skip
       fi }
  :: d_step {   /* give up (reply timeout, after a loss): the connection is replaced */
       waiting[me] && !rq[me] && !rp[me] -> waiting[me] = 0; age[me] = 0;
       printf("MSC: c%d gives request %d up\n", me, seq[me]) }
  :: d_step {   /* read the reply */
       rp[me] ->
       lg[me] = rp_g[me]; linst[me] = rp_inst[me]; ack[me] = seq[me];
#ifdef BUG_DEADLINE_FROM_REPLY
       dl[me] = D - M;
#else
       dl[me] = D - M - age[me];
#endif
       if
       :: dl[me] == 0 -> lg[me] = 0
       :: else -> skip
       fi;
       vf[me] = fss[me]; fss[me] = 0;
#ifdef VERIFY_ANY_REPLY
       vany[me] = 0;
#endif
       printf("MSC: c%d reads reply %d of instance %d: grant %d, deadline in %d\n",
              me, seq[me], linst[me], lg[me], dl[me]);
       waiting[me] = 0; age[me] = 0; rp[me] = 0; rp_g[me] = 0; rp_inst[me] = 0 }
  :: d_step {   /* open a data connection */
       MAY_OPEN(me) && ANY(me, IS_FREE) ->
       FIRST(me, IS_FREE); cs[i] = SENT; afail[i] = vf[me]; i = 0; canon();
       printf("MSC: c%d opens a connection (%d counted, lease %d)\n", me, COUNT(me), lg[me]) }
  :: d_step {   /* close one (its task ended; a shrink) */
       ANY(me, IS_OPEN) -> FIRST(me, IS_OPEN); CLOSED(i); i = 0; canon();
       printf("MSC: c%d closes a connection\n", me) }
  :: d_step {   /* see a failed connection: verify */
       ANY(me, IS_FAILED) ->
       FIRST(me, IS_FAILED); cs[i] = FREE; afail[i] = 0; i = 0; canon();
       vf[me] = 1; fss[me] = 1;
#ifdef VERIFY_ANY_REPLY
       vany[me] = 1;
#endif
       printf("MSC: c%d sees a failed connection: verify\n", me) }
  :: d_step {   /* the deadline: lapsed */
       dl[me] == 0 && ANY(me, IN_USE) -> close_all(me); canon();
       printf("MSC: c%d's lease lapsed: connections closed\n", me) }
  :: d_step { !cut[me] && cuts < MAXCUT -> cut_off(me) }
  :: d_step { deaths < MAXDEATH -> die(me); canon() }; break          /* SIGKILL */
  :: d_step { deaths < MAXDEATH && cuts < MAXCUT ->                    /* host lost */
       cut_off(me); die(me); canon() }; break
  od
}

/* No hook waits for ever: when nothing else can move, no hook is waiting
   (spin's end-state check cannot see it: the worker waits at an end label). */
active proctype Hang() {
end_hang:
  atomic { timeout -> hook_waits_for_ever = ANY_SLOT(IS_ARRIVED); assert(!hook_waits_for_ever) }
}

init {
  atomic {
    alive[0] = 1; alive[1] = 1;
    run Coord(0); run Coord(1)
  }
}

/* A dead or cut-off coordinator's reservation falls to 0 (pan -a -f). */
#define GONE(c) (!alive[c] || cut[c])
ltl share_back { [] ((GONE(0) -> <> RESZERO(0)) && (GONE(1) -> <> RESZERO(1))) }
