/**
 * Post-copy, the destination's side: resume at once on the source's page map, fault missing
 * pages from the source, take the background push, and stop depending on the source when every
 * page has moved.
 *
 *   1. PC_OFFER: the source's page server listens. The destination opens a pager whose store is
 *      a 'migration-source' store (src/tier/migration-source-store.ts): the store, in the
 *      pager's I/O worker, connects to the page server and attaches with the migration id.
 *      Then PC_PREPARED. All of this happens while the source still runs.
 *   2. PC_SWITCHOVER: the source has closed its gate and sent its page map. The destination
 *      builds its space with the same size and addresses: data pages become swapped entries
 *      naming the store's slots (slot i = the source's i-th data page), zero pages the zero
 *      page, holes stay holes; its epoch continues from the source's. The space is returned at
 *      once (PC_RESUMED): the program runs on it while pages move.
 *   3. A read or write of a page not here yet faults: the pager asks its store, which fetches
 *      the page from the source. Meanwhile the source pushes every other page into the store.
 *      A page written here is never overwritten by a late push (see the store's overview).
 *   4. PC_COMPLETE: every page is in the store's local part (or resident): the store has closed
 *      its connection to the source, and the space depends on nothing but this process.
 *
 * Where moved pages live: in the pager's frames when the program touches them, else in the
 * store's local part — by default a temporary swap file (like any pager's), or memory with
 * `local: { kind: 'memory' }`. A pushed page is not copied into a frame on arrival (that would
 * evict the program's working set and cost the program's thread a copy per page): the push
 * lands in the I/O worker, and the page's first use is a local fault, not a network one.
 *
 * The source and the destination must be different processes: a fault blocks this process's
 * main thread until the page arrives, so a source served by the same thread could never answer.
 */
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { parseSize } from '../size.js';
import { ZERO_FRAME } from '../memory/frame-pool.js';
import { swappedEntry } from '../memory/paging.js';
import type { AddressSpace } from '../memory/address-space.js';
import { Pager } from '../tier/pager.js';
import type { MessageConnection } from './connection.js';
import {
  FAULT_TIMEOUT_DEFAULT_MS,
  PC_COMPLETE,
  PC_OFFER,
  PC_PREPARED,
  PC_PROGRESS,
  PC_RESUMED,
  PC_SWITCHOVER,
  PROGRESS_INTERVAL_MS,
  P_BYTES,
  P_BY_FAULT,
  P_BY_PUSH,
  P_DUPLICATES,
  P_FAULTS,
  P_IN_FLIGHT,
  P_NOT_NEEDED,
  P_PUSH_BATCHES,
  P_REMAINING,
  P_SLOTS,
  ProgressCells,
  STATE_COMPLETE,
  STATE_LOST,
  createProgressBuffer,
  decodeSwitchover,
  sourceLost,
  type OfferMessage,
} from './postcopy-protocol.js';
import { PAGE_DATA, decodeJson, encodeJsonFrame, protocolError } from './wire.js';

/** What the migration's handshake agreed on. */
export interface PostCopyHello {
  migrationId: string;
  /** The space's size in bytes. */
  size: number;
  pageSize: number;
  /** The source's epoch at the handshake (the switchover's epoch, sent later, is the one used). */
  epoch: number;
}

export interface PostCopyDestinationOptions {
  /** Resident budget of the destination's pager. Default the space's size, at most 1 GiB. */
  budget?: number | string;
  /** Slots of the pager's store. Default room for every page twice plus the budget, at most 64 GiB. */
  storeSize?: number | string;
  /** Where moved pages live when not resident. Default a temporary swap file in the OS temp directory. */
  local?: { kind: 'memory' } | { kind: 'file'; path?: string; directory?: string };
  /**
   * A fault the source leaves unanswered this long fails with MF_POSTCOPY_SOURCE_LOST (and so
   * does the migration); so does a source silent this long. Default 10 s.
   */
  faultTimeoutMs?: number;
  /**
   * Pages the pager reads ahead on a sequential fault. Default 0: a read-ahead batch fails whole
   * when one of its pages cannot be fetched, so with read-ahead on, a read of a page that has
   * moved could fail with MF_POSTCOPY_SOURCE_LOST because its neighbour had not.
   */
  prefetch?: number;
  /**
   * Data pages after a faulted one that the store asks the source for with it (they land in the
   * store's local part, so a program reading on finds them there). 0 to 256, default 8.
   */
  readAhead?: number;
  /** Trust domain of the new space (see AddressSpaceOptions). */
  domain?: string;
  /** The source's address for the page server. Default the address the main connection reaches. */
  sourceHost?: string;
  /** How long to wait for the source's offer and switchover. Default 30 s. */
  stepTimeoutMs?: number;
  /** Called on each progress tick of the source (every PROGRESS_INTERVAL_MS) and at the end. */
  onProgress?: (progress: PostCopyProgress) => void;
  /**
   * Once every page has moved, bring the moved pages the program has not touched into frames in
   * the background (without blocking its thread), so their first use takes no fault at all.
   * Default: on when the budget holds every data page, off otherwise (warming a space larger
   * than its budget would only evict the working set).
   */
  warm?: boolean;
}

export interface PostCopyProgress {
  state: 'moving' | 'complete' | 'lost';
  /** Data pages to move (zero pages and holes came with the map). */
  pages: number;
  /** Pages whose first copy came by a fault (or the fault's read-ahead). */
  byFault: number;
  /** Pages whose first copy came by the push. */
  byPush: number;
  /** Pages overwritten or trimmed here before they arrived: never needed. */
  notNeeded: number;
  /** Pages still only on the source. */
  remaining: number;
  /** Page bytes received (duplicates included). */
  bytes: number;
  /** Copies that arrived after the page had (a push racing a fault): dropped. */
  duplicates: number;
  /** Pages asked of the source (faults and their read-ahead) and not arrived yet. */
  inFlight: number;
  /** Push messages whose pages are all in the store. */
  pushBatches: number;
  /** Faults answered, and their latency in the store (request to page kept), upper bucket edges. */
  faults: number;
  faultLatencyP50Ms: number;
  faultLatencyP99Ms: number;
}

export interface PostCopyReport extends PostCopyProgress {
  /** SWITCHOVER received to the space returned (the destination's own part of the blackout). */
  switchoverMs: number;
  /** SWITCHOVER received to every page moved. */
  totalMs: number;
}

export interface PostCopyDestination {
  /** The space, running here: same size, addresses and contents as the source's at the switchover. */
  readonly space: AddressSpace;
  /** Its pager (close it after destroying the space, as with any pager). */
  readonly pager: Pager;
  /**
   * Resolves when every page has moved (the space no longer needs the source); rejects with
   * MF_POSTCOPY_SOURCE_LOST when the source is lost first. Never left unhandled by itself.
   */
  readonly completed: Promise<PostCopyReport>;
  progress(): PostCopyProgress;
  readonly switchoverMs: number;
  /**
   * Resolves once the moved pages are resident after completion (see the `warm` option); at
   * completion when warming is off. Never rejects: warming is a hint (a page evicted again, or a
   * space destroyed meanwhile, only ends it early).
   */
  readonly warmed: Promise<void>;
}

const STEP_TIMEOUT_DEFAULT_MS = 30_000;
const BUDGET_DEFAULT_MAX = 1024 ** 3;
const STORE_DEFAULT_MAX = 64 * 1024 ** 3;
const INSTALL_CHUNK = 65536;

/**
 * Runs the destination's side of a post-copy migration over `connection` (the handshake is
 * done and agreed `hello`). Resolves at the switchover with the running space; see
 * PostCopyDestination for the rest.
 */
export async function receivePostCopy(
  connection: MessageConnection,
  hello: PostCopyHello,
  options: PostCopyDestinationOptions = {},
): Promise<PostCopyDestination> {
  checkHello(hello);
  const stepTimeoutMs = options.stepTimeoutMs ?? STEP_TIMEOUT_DEFAULT_MS;
  const faultTimeoutMs = options.faultTimeoutMs ?? FAULT_TIMEOUT_DEFAULT_MS;
  const inbox = new Inbox(connection, faultTimeoutMs);
  let pager: Pager | undefined;
  try {
    const offer = decodeJson<OfferMessage>(await inbox.expect(PC_OFFER, stepTimeoutMs, 'offer its pages'));
    if (
      offer.migrationId !== hello.migrationId ||
      offer.size !== hello.size ||
      offer.pageSize !== hello.pageSize ||
      !Number.isInteger(offer.port)
    ) {
      throw protocolError("the source's post-copy offer does not match the handshake");
    }
    const pageSize = hello.pageSize;
    const pages = Math.ceil(hello.size / pageSize);
    const budget = options.budget ?? Math.max(4 * pageSize, Math.min(hello.size, BUDGET_DEFAULT_MAX));
    const budgetBytes = parseSize(budget, 'budget');
    const storeSize =
      options.storeSize ??
      Math.min(STORE_DEFAULT_MAX, (2 * pages + Math.ceil(budgetBytes / pageSize) + 1024) * pageSize);
    const progressBuffer = createProgressBuffer();
    const cells = new ProgressCells(progressBuffer);
    pager = await Pager.open({
      budget,
      pageSize,
      storeSize,
      prefetch: options.prefetch ?? 0,
      store: {
        kind: 'migration-source',
        host: options.sourceHost ?? connection.socket.remoteAddress ?? '127.0.0.1',
        port: offer.port,
        migrationId: hello.migrationId,
        faultTimeoutMs,
        progress: progressBuffer,
        ...(options.local ? { local: options.local } : {}),
        ...(options.readAhead === undefined ? {} : { readAhead: options.readAhead }),
      },
    });
    connection.post(encodeJsonFrame(PC_PREPARED, {}));

    const payload = await inbox.expect(PC_SWITCHOVER, stepTimeoutMs, 'switch over');
    const received = performance.now();
    const { header, runs } = decodeSwitchover(payload, pages);
    const space = pager.createSpace({
      size: hello.size,
      ...(options.domain ? { domain: options.domain } : {}),
    });
    try {
      install(space, pager, runs, header.slots);
    } catch (error) {
      space.destroy();
      throw error;
    }
    // Continue the source's epoch: writes here from now on are recorded after its last ones.
    if (header.epoch > space.epoch) {
      space.epoch = header.epoch - 1;
      space.advanceEpoch();
    }
    connection.post(encodeJsonFrame(PC_RESUMED, {}));
    const switchoverMs = performance.now() - received;

    const progress = (): PostCopyProgress => readProgress(cells);
    const completed = inbox.completion(cells, progress, options.onProgress).then((): PostCopyReport => {
      return { ...progress(), switchoverMs, totalMs: performance.now() - received };
    });
    completed.catch(() => undefined);
    const warm = options.warm ?? header.slots <= 0.9 * Math.floor(budgetBytes / pageSize);
    const warmed = completed.then(
      () => (warm ? warmUp(space, runs) : undefined),
      () => undefined,
    );
    return { space, pager, completed, progress, switchoverMs, warmed };
  } catch (error) {
    inbox.stop();
    connection.abort(
      error instanceof MemfabricError
        ? error
        : new MemfabricError(
            ErrorCodes.INTERNAL,
            `post-copy destination failed: ${(error as Error).message}`,
          ),
    );
    await pager?.close().catch(() => undefined);
    throw error;
  }
}

/**
 * Maps the source's pages into the fresh space: data runs as swapped entries naming slots in
 * page order, zero runs as the zero page. Each entry holds one reference on its slot.
 */
function install(
  space: AddressSpace,
  pager: Pager,
  runs: { first: number; count: number; kind: number }[],
  slots: number,
): void {
  pager.adoptRange(0, slots);
  pager.sealAdopted();
  const chunk = new Int32Array(INSTALL_CHUNK);
  let slot = 0;
  for (const run of runs) {
    for (let done = 0; done < run.count;) {
      const n = Math.min(INSTALL_CHUNK, run.count - done);
      const entries = chunk.subarray(0, n);
      if (run.kind === PAGE_DATA) {
        for (let i = 0; i < n; i++) entries[i] = swappedEntry(slot++);
      } else {
        entries.fill(ZERO_FRAME);
      }
      space.installStored(run.first + done, entries);
      done += n;
    }
  }
}

/**
 * Loads the data runs into frames without blocking (the pager's async load): a page written or
 * trimmed meanwhile keeps what the program put there (a load installs a page only if its entry
 * is still the one it read). Stops quietly at the first refusal (space destroyed, pager closed).
 */
async function warmUp(
  space: AddressSpace,
  runs: { first: number; count: number; kind: number }[],
): Promise<void> {
  const pageSize = space.pageSize;
  try {
    for (const run of runs) {
      if (run.kind !== PAGE_DATA) continue;
      for (let done = 0; done < run.count; done += INSTALL_CHUNK) {
        const first = run.first + done;
        const end = Math.min(run.first + run.count, first + INSTALL_CHUNK);
        const length = Math.min(space.size, end * pageSize) - first * pageSize;
        await space.load(first * pageSize, length);
      }
    }
  } catch {
    // A hint only: see above.
  }
}

function readProgress(cells: ProgressCells): PostCopyProgress {
  const f = cells.f64;
  const state = cells.state;
  return {
    state: state === STATE_COMPLETE ? 'complete' : state === STATE_LOST ? 'lost' : 'moving',
    pages: Math.max(0, f[P_SLOTS]!),
    byFault: f[P_BY_FAULT]!,
    byPush: f[P_BY_PUSH]!,
    notNeeded: f[P_NOT_NEEDED]!,
    remaining: f[P_REMAINING]!,
    bytes: f[P_BYTES]!,
    duplicates: f[P_DUPLICATES]!,
    pushBatches: f[P_PUSH_BATCHES]!,
    inFlight: f[P_IN_FLIGHT]!,
    faults: f[P_FAULTS]!,
    faultLatencyP50Ms: cells.latencyMs(0.5),
    faultLatencyP99Ms: cells.latencyMs(0.99),
  };
}

/** The main connection's messages, for the destination: one waited for at a time. */
class Inbox {
  private readonly messages: { type: number; payload: Buffer }[] = [];
  private waiter: (() => void) | undefined;
  private lastHeard = performance.now();
  private onProgress: (() => void) | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(
    private readonly connection: MessageConnection,
    private readonly silenceMs: number,
  ) {
    connection.onMessage((type, payload) => {
      this.lastHeard = performance.now();
      if (type === PC_PROGRESS) {
        this.onProgress?.();
        return;
      }
      this.messages.push({ type, payload: Buffer.from(payload) });
      this.waiter?.();
    });
    void connection.closed.then(() => this.waiter?.());
  }

  async expect(type: number, timeoutMs: number, what: string): Promise<Buffer> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const message = this.messages.shift();
      if (message) {
        if (message.type !== type) {
          throw protocolError(`the source sent message ${message.type} where ${type} belongs`);
        }
        return message.payload;
      }
      if (!this.connection.isOpen) {
        throw (
          this.connection.error ??
          new MemfabricError(ErrorCodes.CONNECTION_CLOSED, 'the migration source closed the connection')
        );
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new MemfabricError(
          ErrorCodes.TIMEOUT,
          `the post-copy source did not ${what} within ${timeoutMs} ms; the migration failed and the source keeps its space`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = undefined;
    }
  }

  /**
   * Resolves on PC_COMPLETE (then closes the connection); rejects with POSTCOPY_SOURCE_LOST when
   * the connection ends first, the store loses the source, or the source falls silent.
   */
  completion(
    cells: ProgressCells,
    progress: () => PostCopyProgress,
    onProgress: ((progress: PostCopyProgress) => void) | undefined,
  ): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const finish = (error?: MemfabricError): void => {
        if (settled) return;
        settled = true;
        this.stop();
        this.waiter = undefined;
        if (error) {
          this.connection.destroy();
          reject(error);
          return;
        }
        onProgress?.(progress());
        void this.connection.close();
        resolve();
      };
      const check = (): void => {
        const message = this.messages.shift();
        if (message) {
          if (message.type !== PC_COMPLETE) {
            finish(sourceLost(`it sent message ${message.type} mid-migration`));
          } else if (cells.state !== STATE_COMPLETE) {
            finish(sourceLost('it declared the migration complete while pages were still missing here'));
          } else {
            finish();
          }
          return;
        }
        const now = performance.now();
        // A check that comes late (this thread was busy) runs before the socket's news is read:
        // judge silence only from a check that came on time.
        const onTime = now - lastCheck < 2 * PROGRESS_INTERVAL_MS;
        lastCheck = now;
        if (cells.state === STATE_COMPLETE && !this.connection.isOpen) {
          // Every page is here: the source's last word does not matter any more.
          finish();
        } else if (cells.state === STATE_LOST) {
          finish(sourceLost('the page store lost its connection to it'));
        } else if (!this.connection.isOpen) {
          finish(sourceLost(this.connection.error?.message ?? 'the connection to it closed'));
        } else if (onTime && now - this.lastHeard > Math.max(this.silenceMs, 3 * PROGRESS_INTERVAL_MS)) {
          finish(sourceLost(`nothing heard from it for ${this.silenceMs} ms`));
        }
      };
      let lastCheck = performance.now();
      this.waiter = check;
      this.onProgress = () => onProgress?.(progress());
      void this.connection.closed.then(check);
      // The store's state lives in shared memory: look at it on a timer as well.
      this.timer = setInterval(check, PROGRESS_INTERVAL_MS / 2);
      this.timer.unref();
      check();
    });
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.onProgress = undefined;
  }
}

function checkHello(hello: PostCopyHello): void {
  if (typeof hello !== 'object' || hello === null)
    throw invalidArgument('receivePostCopy needs the handshake');
  if (typeof hello.migrationId !== 'string' || hello.migrationId === '') {
    throw invalidArgument("receivePostCopy needs the migration's id (hello.migrationId)");
  }
  if (!Number.isSafeInteger(hello.size) || hello.size <= 0) {
    throw invalidArgument(`hello.size ${hello.size} must be a positive whole number of bytes`);
  }
  if (!Number.isInteger(hello.pageSize) || hello.pageSize <= 0) {
    throw invalidArgument(`hello.pageSize ${hello.pageSize} must be a positive whole number`);
  }
}
