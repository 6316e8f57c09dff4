/**
 * Which listen addresses reach beyond this machine, and what to warn about when they do. The
 * appliance defaults to loopback; binding anything else without TLS exposes every region to
 * whoever can reach the port (plain NBD has no authentication).
 */
import { isIP } from 'node:net';
import type { NbdTlsMode } from '../nbd/index.js';

/** True for 127.0.0.0/8, ::1 and 'localhost'; wildcards ('', 0.0.0.0, ::) and other hosts are not. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (h.startsWith('::ffff:')) return h.slice(7).startsWith('127.');
  return false;
}

/** The warning for an NBD listener, or undefined when there is nothing to warn about. */
export function nbdExposureWarning(host: string, tlsMode: NbdTlsMode): string | undefined {
  if (isLoopbackHost(host)) return undefined;
  if (tlsMode === 'off') {
    return (
      `NBD listens on ${host || 'every address'} without TLS: anyone who reaches the port can read and ` +
      'write every region; use --tls require with --tls-psk (tenant isolation) or --tls-certificates'
    );
  }
  if (tlsMode === 'on') {
    return (
      `NBD listens on ${host || 'every address'} with optional TLS: plain clients still reach every ` +
      'region; use --tls require'
    );
  }
  return undefined;
}
