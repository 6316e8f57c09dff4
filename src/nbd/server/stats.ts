/**
 * Counters shared by every connection of one server. Plain numbers bumped in place on the hot
 * path; `snapshot` copies them out for callers.
 */
import { CMD_COUNT, COMMAND_NAMES } from '../protocol/constants.js';

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

  countRequest(type: number): void {
    this.requests[type < CMD_COUNT ? type : CMD_COUNT]++;
  }

  /** `buffer`: the global budget's use and capacity, read at snapshot time. */
  snapshot(buffer: { used: number; capacity: number } = { used: 0, capacity: 0 }): NbdStats {
    const requests = { unknown: this.requests[CMD_COUNT] } as NbdStats['requests'];
    for (let i = 0; i < CMD_COUNT; i++) requests[COMMAND_NAMES[i]] = this.requests[i];
    return {
      connectionsOpen: this.connectionsOpen,
      connectionsTotal: this.connectionsTotal,
      requests,
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
      bytesReceived: this.bytesReceived,
      errors: this.errors,
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
