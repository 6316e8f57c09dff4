/**
 * The hostile NBD clients of issue 12 point 5, against one appliance, with a well-behaved
 * client alongside, while the appliance's RSS is sampled from /proc/PID/status. Shared by the
 * resource test (short) and the appliance bench (same load, also run against older builds).
 *
 *   readers        connections each pipelining READs of 32 MiB and never reading a reply
 *   stalled        connections each sending half of a 32 MiB WRITE payload, then nothing
 *   idle           connections that finish the handshake and then send nothing
 *   flood          connection attempts on top (the connection limit refuses most)
 *   listers        connections sending NBD_OPT_LIST over and over, never reading
 *   good client    writes a pattern, reads it back and checks every byte, `goodRounds` times
 *
 * Every hostile socket is destroyed by `stop`; the whole run is bounded by `deadlineMs`.
 */
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { NbdClient } from '../../src/nbd/index.js';
import * as C from '../../src/nbd/protocol/constants.js';
import { encodeRequest, infoData } from '../nbd/raw-client.js';

const MiB = 1024 * 1024;

export interface HostileLoadOptions {
  host: string;
  port: number;
  pid: number;
  /** Region the hostile clients use (at least 64 MiB). */
  region: string;
  /** Region the good client writes and reads (at least goodBytes). */
  goodRegion: string;
  readers: number;
  readsPerReader: number;
  stalled: number;
  idle: number;
  flood: number;
  listers: number;
  listsPerLister: number;
  goodRounds: number;
  goodBytes: number;
  deadlineMs: number;
}

export const SUITE_LOAD = {
  readers: 12,
  readsPerReader: 50,
  stalled: 8,
  idle: 10,
  flood: 100,
  listers: 2,
  listsPerLister: 2000,
  goodRounds: 3,
  goodBytes: 4 * MiB,
  deadlineMs: 120_000,
} satisfies Partial<HostileLoadOptions>;

/** The load of the issue's reproduction: 30 readers x 200 READs of 32 MiB, 20 stalled WRITEs. */
export const ISSUE_LOAD = {
  ...SUITE_LOAD,
  readers: 30,
  readsPerReader: 200,
  stalled: 20,
} satisfies Partial<HostileLoadOptions>;

export interface HostileLoadResult {
  rssStartBytes: number;
  rssMaxBytes: number;
  /** The good client's rounds that read back exactly what they wrote. */
  goodRoundsOk: number;
  /** Time the good client's rounds took (they start once every hostile client is in place). */
  goodMs: number;
  /** Hostile connections the server accepted (got a greeting). */
  accepted: number;
  elapsedMs: number;
}

export function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (match === null) throw new Error(`no VmRSS for ${pid}`);
  return Number(match[1]) * 1024;
}

/** Opens a socket, reads the greeting, sends client flags; resolves false if refused. */
function greet(host: string, port: number, sockets: Socket[]): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const socket = connect(port, host);
    sockets.push(socket);
    let got = 0;
    const timer = setTimeout(() => done(undefined), 10_000);
    const done = (value: Socket | undefined) => {
      clearTimeout(timer);
      socket.removeAllListeners('data');
      resolve(value);
    };
    socket.on('error', () => done(undefined));
    socket.on('close', () => done(undefined));
    socket.on('data', (chunk: Buffer) => {
      got += chunk.length;
      if (got >= C.SERVER_GREETING_BYTES) {
        socket.write(Buffer.from([0, 0, 0, 3]));
        done(socket);
      }
    });
  });
}

function option(type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(C.OPTION_HEADER_BYTES);
  header.writeUInt32BE(C.IHAVEOPT_HI, 0);
  header.writeUInt32BE(C.IHAVEOPT_LO, 4);
  header.writeUInt32BE(type, 8);
  header.writeUInt32BE(data.length, 12);
  return Buffer.concat([header, data]);
}

/** Greets and sends GO for `region`; the replies are left unread (a hostile client). */
async function enter(o: HostileLoadOptions, sockets: Socket[]): Promise<Socket | undefined> {
  const socket = await greet(o.host, o.port, sockets);
  if (socket === undefined) return undefined;
  socket.pause();
  socket.write(option(C.OPT_GO, infoData(o.region)));
  return socket;
}

export async function hostileLoad(o: HostileLoadOptions): Promise<HostileLoadResult> {
  const started = Date.now();
  const sockets: Socket[] = [];
  const rssStartBytes = rssBytes(o.pid);
  let rssMaxBytes = rssStartBytes;
  const sampler = setInterval(() => {
    try {
      rssMaxBytes = Math.max(rssMaxBytes, rssBytes(o.pid));
    } catch {
      // the process is gone; the caller will notice
    }
  }, 20);
  let accepted = 0;
  const counted = (s: Socket | undefined) => {
    if (s !== undefined) accepted++;
    return s;
  };
  // The good client connects first: a flood fills the connection limit, and it is the
  // connections already served that must keep working.
  const good = await NbdClient.connect({
    host: o.host,
    port: o.port,
    exportName: o.goodRegion,
    connectTimeoutMs: o.deadlineMs,
    requestTimeoutMs: o.deadlineMs,
  });
  try {
    const payload = Buffer.alloc(16 * MiB, 0xee);
    const jobs: Array<Promise<unknown>> = [];
    for (let i = 0; i < o.readers; i++) {
      jobs.push(
        enter(o, sockets).then((s) => {
          if (counted(s) === undefined) return;
          const frames: Buffer[] = [];
          for (let r = 0; r < o.readsPerReader; r++) {
            frames.push(encodeRequest(C.CMD_READ, (r % 2) * 32 * MiB, 32 * MiB, 0, BigInt(r)));
          }
          s!.write(Buffer.concat(frames));
        }),
      );
    }
    for (let i = 0; i < o.stalled; i++) {
      jobs.push(
        enter(o, sockets).then((s) => {
          if (counted(s) === undefined) return;
          s!.write(encodeRequest(C.CMD_WRITE, 0, 32 * MiB, 0, 1n));
          s!.write(payload);
        }),
      );
    }
    for (let i = 0; i < o.idle; i++) jobs.push(enter(o, sockets).then(counted));
    for (let i = 0; i < o.listers; i++) {
      jobs.push(
        greet(o.host, o.port, sockets).then((s) => {
          if (counted(s) === undefined) return;
          s!.pause();
          s!.write(Buffer.concat(new Array<Buffer>(o.listsPerLister).fill(option(C.OPT_LIST))));
        }),
      );
    }
    for (let i = 0; i < o.flood; i++) jobs.push(greet(o.host, o.port, sockets).then(counted));
    await Promise.all(jobs);

    // The good client's work, while all of the above hold what they can.
    let goodRoundsOk = 0;
    const goodStarted = Date.now();
    let goodMs = 0;
    try {
      const data = Buffer.alloc(o.goodBytes);
      for (let round = 0; round < o.goodRounds && Date.now() - started < o.deadlineMs; round++) {
        for (let i = 0; i < data.length; i++) data[i] = (i * 31 + round * 7 + 1) & 0xff;
        await good.write(0, data);
        const back = await good.read(0, data.length);
        if (back.equals(data)) goodRoundsOk++;
      }
      goodMs = Date.now() - goodStarted;
    } finally {
      await good.disconnect().catch(() => good.destroy());
    }
    return { rssStartBytes, rssMaxBytes, goodRoundsOk, goodMs, accepted, elapsedMs: Date.now() - started };
  } finally {
    clearInterval(sampler);
    for (const s of sockets) s.destroy();
  }
}
