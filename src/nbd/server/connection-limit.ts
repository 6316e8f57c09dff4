/**
 * The default NBD connection limit, derived from the process's open-file limit so that running
 * out of descriptors can never take the admin API (or region files) down with it.
 *
 *   maxConnections = min(CONNECTIONS_DEFAULT_MAX, max(1, floor((nofile - FD_RESERVE) / 2)))
 *
 * Each NBD connection costs one descriptor. FD_RESERVE covers the admin API's own sockets, logs
 * and the data directory; halving what is left keeps as many again for file-backed regions
 * (one descriptor each) and admin clients. With `ulimit -n` 1024 that is 384 connections;
 * from 2304 up it is CONNECTIONS_DEFAULT_MAX.
 */
import { readFileSync } from 'node:fs';
import { CONNECTIONS_DEFAULT_MAX, FD_RESERVE, OPEN_FILES_FALLBACK } from './limits.js';

/** The soft open-file limit (RLIMIT_NOFILE) from /proc/self/limits, or OPEN_FILES_FALLBACK. */
export function openFilesLimit(limitsText?: string): number {
  let text = limitsText;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/limits', 'utf8');
    } catch {
      return OPEN_FILES_FALLBACK;
    }
  }
  const match = /^Max open files\s+(\S+)/m.exec(text);
  if (match === null) return OPEN_FILES_FALLBACK;
  if (match[1] === 'unlimited') return Number.MAX_SAFE_INTEGER;
  const soft = Number(match[1]);
  return Number.isSafeInteger(soft) && soft > 0 ? soft : OPEN_FILES_FALLBACK;
}

/** The connection limit used when none is configured. */
export function defaultMaxConnections(openFiles: number = openFilesLimit()): number {
  return Math.min(CONNECTIONS_DEFAULT_MAX, Math.max(1, Math.floor((openFiles - FD_RESERVE) / 2)));
}
