/**
 * Counters shared by every connection of one server. Plain numbers bumped in place on the hot
 * path; `snapshot` copies them out for callers.
 */
import { CMD_COUNT, COMMAND_NAMES } from './constants.js';

export interface NbdStats {
  connectionsOpen: number;
  connectionsTotal: number;
  /** Requests received, by command name; 'unknown' counts command numbers we do not know. */
  requests: Record<(typeof COMMAND_NAMES)[number] | 'unknown', number>;
  /** Payload bytes served by READ and accepted by WRITE. */
  bytesRead: number;
  bytesWritten: number;
  /** Requests answered with an error (rejected by validation or failed in the export). */
  errors: number;
  /** Connections dropped because the peer broke the protocol. */
  protocolViolations: number;
}

export class StatsCounters {
  connectionsOpen = 0;
  connectionsTotal = 0;
  /** Index = command number; the last slot counts unknown commands. */
  readonly requests = new Float64Array(CMD_COUNT + 1);
  bytesRead = 0;
  bytesWritten = 0;
  errors = 0;
  protocolViolations = 0;

  countRequest(type: number): void {
    this.requests[type < CMD_COUNT ? type : CMD_COUNT]++;
  }

  snapshot(): NbdStats {
    const requests = { unknown: this.requests[CMD_COUNT] } as NbdStats['requests'];
    for (let i = 0; i < CMD_COUNT; i++) requests[COMMAND_NAMES[i]] = this.requests[i];
    return {
      connectionsOpen: this.connectionsOpen,
      connectionsTotal: this.connectionsTotal,
      requests,
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
      errors: this.errors,
      protocolViolations: this.protocolViolations,
    };
  }
}
