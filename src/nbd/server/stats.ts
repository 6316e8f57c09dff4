/**
 * Counters shared by every connection of one server. Plain numbers bumped in place on the hot
 * path; `snapshot` copies them out for callers.
 */
import { CMD_COUNT, COMMAND_NAMES } from '../protocol/constants.js';
import { errnoName } from '../protocol/errno.js';
import type { NbdExport } from './export.js';
import { RequestLatency } from './latency.js';

/** Errnos are counted in a small array indexed by value; larger values share the last slot. */
const ERRNO_SLOTS = 128;

export interface NbdStats {
  connectionsOpen: number;
  connectionsTotal: number;
  /** Requests received, by command name; 'unknown' counts command numbers we do not know. */
  requests: Record<(typeof COMMAND_NAMES)[number] | 'unknown', number>;
  /** Payload bytes served by READ and accepted by WRITE. */
  bytesRead: number;
  bytesWritten: number;
  /** Every byte received from clients (handshake and requests, headers and payloads). */
  bytesReceived: number;
  /** Requests answered with an error (rejected by validation or failed in the export). */
  errors: number;
  /** The same, by errno name ('ENOSPC', 'EINVAL', ...); errnos never answered are absent. */
  errorsByErrno: Record<string, number>;
  /** Connections dropped because the peer broke the protocol. */
  protocolViolations: number;
  /** Connections refused at accept because `maxConnections` were open. */
  connectionsRefused: number;
  /** Connections closed for leaving more than the handshake idle timeout between options. */
  handshakeTimeouts: number;
  /** Connections closed in transmission after the idle timeout with nothing in flight. */
  idleTimeouts: number;
  /** Connections closed because a WRITE payload stopped arriving for the stall timeout. */
  payloadStalls: number;
  /** Connections closed because queued replies were not read for the stall timeout. */
  replyStalls: number;
  /** NBD_OPT_LIST options refused (NBD_REP_ERR_POLICY) past LIST_OPTIONS_MAX on a connection. */
  listRefusals: number;
  /** Times a connection stopped reading because its own queued replies reached the bound. */
  replyPauses: number;
  /** Data requests that waited for the global buffer budget. */
  budgetWaits: number;
  /** Bytes of the global buffer budget in use now, and its capacity. */
  bufferBytesUsed: number;
  bufferBytesMax: number;
}

export class StatsCounters {
  connectionsOpen = 0;
  connectionsTotal = 0;
  /** Index = command number; the last slot counts unknown commands. */
  readonly requests = new Float64Array(CMD_COUNT + 1);
  bytesRead = 0;
  bytesWritten = 0;
  bytesReceived = 0;
  errors = 0;
  protocolViolations = 0;
  connectionsRefused = 0;
  handshakeTimeouts = 0;
  idleTimeouts = 0;
  payloadStalls = 0;
  replyStalls = 0;
  listRefusals = 0;
  replyPauses = 0;
  budgetWaits = 0;
  /** Request latency by command (latency.ts). */
  readonly latency = new RequestLatency();
  /** Errors answered, by errno value. */
  readonly errnos = new Float64Array(ERRNO_SLOTS);
  /** Called for every error answered to a request (the appliance logs ENOSPC); unset: nothing. */
  onError: ((errno: number, exp: NbdExport) => void) | undefined;

  /** One request answered with `errno`, by export `exp`. */
  countError(errno: number, exp: NbdExport): void {
    this.errors++;
    this.errnos[errno < ERRNO_SLOTS ? errno : ERRNO_SLOTS - 1]++;
    this.onError?.(errno, exp);
  }

  countRequest(type: number): void {
    this.requests[type < CMD_COUNT ? type : CMD_COUNT]++;
  }

  /** `buffer`: the global budget's use and capacity, read at snapshot time. */
  snapshot(buffer: { used: number; capacity: number } = { used: 0, capacity: 0 }): NbdStats {
    const requests = { unknown: this.requests[CMD_COUNT] } as NbdStats['requests'];
    for (let i = 0; i < CMD_COUNT; i++) requests[COMMAND_NAMES[i]] = this.requests[i];
    const errorsByErrno: Record<string, number> = {};
    for (let errno = 0; errno < ERRNO_SLOTS; errno++) {
      if (this.errnos[errno] > 0) errorsByErrno[errnoName(errno)] = this.errnos[errno];
    }
    return {
      connectionsOpen: this.connectionsOpen,
      connectionsTotal: this.connectionsTotal,
      requests,
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
      bytesReceived: this.bytesReceived,
      errors: this.errors,
      errorsByErrno,
      protocolViolations: this.protocolViolations,
      connectionsRefused: this.connectionsRefused,
      handshakeTimeouts: this.handshakeTimeouts,
      idleTimeouts: this.idleTimeouts,
      payloadStalls: this.payloadStalls,
      replyStalls: this.replyStalls,
      listRefusals: this.listRefusals,
      replyPauses: this.replyPauses,
      budgetWaits: this.budgetWaits,
      bufferBytesUsed: buffer.used,
      bufferBytesMax: buffer.capacity,
    };
  }
}
