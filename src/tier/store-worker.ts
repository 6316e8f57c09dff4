/**
 * The store worker: the thread a StoreChannel (store-channel.ts) starts. It opens the page
 * store from its spec, runs the destager over the destage queue and serves the read ring, all
 * through shared memory; messages carry only startup, segments, close, and error texts.
 * Hand-written on purpose (the product's I/O thread).
 *
 * Reads go first: the destager calls `serveReads` before it starts new destage operations.
 * Reads land straight in the frame pool's segments (SharedArrayBuffers handed over at start or
 * later with `segment` messages; a read naming a segment not yet received waits for it).
 *
 * If anything escapes (an uncaught exception or rejection), the worker marks itself CRASHED in
 * the read ring, posts the reason on the error port, wakes every waiter and exits: waiters on
 * the main thread turn that into STORE_FAILED instead of hanging.
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { DestageQueueConsumer, errorCodeNumber, errorCodeOf } from './destage-queue.js';
import { Destager } from './destager.js';
import { toWire, type WireError } from './error-wire.js';
import { openPageStore } from './open-store.js';
import type { DirectReadSource, PageStore, StoreSpec } from './page-store.js';
import { HEARTBEAT_MS, ReadRingConsumer, WORKER_CLOSED, WORKER_CRASHED, WORKER_READY } from './read-ring.js';

export interface StoreWorkerData {
  spec: StoreSpec;
  pageSize: number;
  capacity: number;
  segments: SharedArrayBuffer[];
  queue: SharedArrayBuffer;
  ring: SharedArrayBuffer;
  errorPort: MessagePort;
  writeConcurrency?: number;
  deleteConcurrency?: number;
}

/** Messages on the error port (read synchronously by the main thread). */
export type ErrorPortMessage =
  | { kind: 'read'; desc: number; slot: number; message: string; error: WireError }
  | { kind: 'failure'; slot: number; message: string; error: WireError }
  | { kind: 'crash'; message: string; error: WireError };

/** Messages from the main thread. */
export type ToWorker =
  | { type: 'segment'; index: number; segment: SharedArrayBuffer }
  | { type: 'close' }
  | { type: 'crash-for-test'; afterMs: number };

/** Messages to the main thread. */
export type FromWorker =
  | { type: 'ready'; name: string; direct?: DirectReadSource }
  | { type: 'open-failed'; code: string; message: string; error: WireError }
  | { type: 'closed'; error?: string };

const data = workerData as StoreWorkerData;
const port = parentPort!;
const errorPort = data.errorPort;
const ring = new ReadRingConsumer(data.ring);
const queue = new DestageQueueConsumer(data.queue);
const pageSize = data.pageSize;
const segments: SharedArrayBuffer[] = data.segments.slice();
let store: PageStore | undefined;
let destager: Destager | undefined;
let stopped = false;
let crashed = false;
let heartbeat: ReturnType<typeof setInterval> | undefined;
/** Reads naming a segment this worker has not received yet. */
let waitingForSegment: number[] = [];
let readsInFlight = 0;

/**
 * After serving requests, with nothing left in flight, the worker polls both doorbells this long
 * before parking on Atomics.waitAsync: waking a parked worker costs about 25 us (measured:
 * ping-pong 30 us parked vs 6 us polling), and sequential faults arrive back to back. The poll
 * never delays I/O completions because it only runs when no store operation is in flight.
 */
const POLL_BEFORE_PARK_MS = 0.05;
const immediate = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function crash(error: unknown): void {
  if (crashed) return;
  crashed = true;
  try {
    errorPort.postMessage({
      kind: 'crash',
      message: messageOf(error),
      error: toWire(error),
    } satisfies ErrorPortMessage);
  } finally {
    ring.setState(WORKER_CRASHED);
    ring.wakeAll();
    queue.wakeAll();
    if (heartbeat) clearInterval(heartbeat);
    process.exit(1);
  }
}

process.on('uncaughtException', crash);
process.on('unhandledRejection', crash);

// One pair of callbacks per descriptor, made once: serving a read allocates only its view.
const readDone: (() => void)[] = [];
const readFailed: ((error: unknown) => void)[] = [];

function makeCallbacks(d: number): void {
  readDone[d] = () => {
    readsInFlight--;
    ring.complete(d, 0);
  };
  readFailed[d] = (error: unknown) => {
    readsInFlight--;
    errorPort.postMessage({
      kind: 'read',
      desc: d,
      slot: ring.slot(d),
      message: messageOf(error),
      error: toWire(error),
    } satisfies ErrorPortMessage);
    ring.complete(d, errorCodeNumber(errorCodeOf(error)));
  };
}

function issueRead(d: number): void {
  const segment = ring.segment(d);
  if (segment >= segments.length) {
    waitingForSegment.push(d);
    return;
  }
  if (readDone[d] === undefined) makeCallbacks(d);
  readsInFlight++;
  let op: Promise<void>;
  try {
    op = store!.read(ring.slot(d), new Uint8Array(segments[segment], ring.offset(d), pageSize));
  } catch (error) {
    op = Promise.reject(error);
  }
  op.then(readDone[d], readFailed[d]);
}

/** Issues every submitted read (called on the read doorbell and before destage operations). */
function serveReads(): void {
  for (let d = ring.take(); d >= 0; d = ring.take()) issueRead(d);
}

function idle(): boolean {
  return readsInFlight === 0 && (destager === undefined || destager.inFlight === 0);
}

/** Polls for a read (true) until a destage request comes or the poll time ends (false). */
function pollReads(seen: number): boolean {
  const queueSeen = queue.doorbell();
  const until = performance.now() + POLL_BEFORE_PARK_MS;
  do {
    if (ring.doorbell() !== seen) return true;
    // A destage request: yield, so the destager's own wait resolves.
    if (queue.doorbell() !== queueSeen) return false;
  } while (performance.now() < until);
  return false;
}

async function readLoop(): Promise<void> {
  while (!stopped) {
    const seen = ring.doorbell();
    serveReads();
    // Let the completions of what was just issued run (they are microtasks for a memory store).
    if (!idle()) await immediate();
    if (idle() && pollReads(seen)) continue;
    await ring.waitDoorbell(seen);
  }
}

async function close(): Promise<void> {
  let error: string | undefined;
  stopped = true;
  ring.wake();
  destager?.stop();
  try {
    // The main thread flushed before asking; operations still in flight finish inside close.
    await store?.close();
  } catch (e) {
    error = messageOf(e);
  }
  if (heartbeat) clearInterval(heartbeat);
  ring.setState(WORKER_CLOSED);
  ring.wakeAll();
  port.postMessage({ type: 'closed', ...(error === undefined ? {} : { error }) } satisfies FromWorker);
}

port.on('message', (message: ToWorker) => {
  switch (message.type) {
    case 'segment': {
      segments[message.index] = message.segment;
      const waiting = waitingForSegment;
      waitingForSegment = [];
      for (const d of waiting) issueRead(d);
      break;
    }
    case 'close':
      void close();
      break;
    case 'crash-for-test':
      setTimeout(() => {
        throw new Error('store worker crashed on purpose (test)');
      }, message.afterMs);
      break;
  }
});

async function start(): Promise<void> {
  try {
    store = await openPageStore(data.spec, { pageSize, capacity: data.capacity });
  } catch (error) {
    port.postMessage({
      type: 'open-failed',
      code: errorCodeOf(error),
      message: messageOf(error),
      error: toWire(error),
    } satisfies FromWorker);
    return;
  }
  destager = new Destager(queue, store, {
    ...(data.writeConcurrency === undefined ? {} : { writeConcurrency: data.writeConcurrency }),
    ...(data.deleteConcurrency === undefined ? {} : { deleteConcurrency: data.deleteConcurrency }),
    beforeStart: serveReads,
    onFailure: (error, slot, first) => {
      if (first) {
        errorPort.postMessage({
          kind: 'failure',
          slot,
          message: messageOf(error),
          error: toWire(error),
        } satisfies ErrorPortMessage);
      }
    },
  });
  heartbeat = setInterval(() => ring.beat(), HEARTBEAT_MS);
  ring.setState(WORKER_READY);
  void destager.run();
  void readLoop();
  const direct = store.directSource?.();
  port.postMessage({
    type: 'ready',
    name: store.name,
    ...(direct === undefined ? {} : { direct }),
  } satisfies FromWorker);
}

void start();
