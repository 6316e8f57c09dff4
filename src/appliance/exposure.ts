/**
 * Which listen addresses reach beyond this machine, and what to warn about when they do. The
 * appliance defaults to loopback; binding anything else without TLS exposes the admin API's
 * tokens and requests, and every region NBD serves, to whoever can reach the port (plain NBD
 * has no authentication).
 */
import { BlockList, isIP } from 'node:net';
import type { NbdTlsMode } from '../nbd/index.js';

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/**
 * True for 127.0.0.0/8, ::1, IPv4-mapped loopback and the name localhost; wildcards ('',
 * 0.0.0.0, ::) and every other host are not.
 */
export function isLoopback(host: string | undefined): boolean {
  if (host === undefined) return false;
  const bare = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (bare === 'localhost') return true;
  const v4 = bare.startsWith('::ffff:') ? bare.slice(7) : bare;
  if (isIP(v4) === 4) return LOOPBACK.check(v4, 'ipv4');
  return isIP(bare) === 6 && LOOPBACK.check(bare, 'ipv6');
}

/** The warning for an NBD listener, or undefined when there is nothing to warn about. */
export function nbdExposureWarning(host: string, tlsMode: NbdTlsMode): string | undefined {
  if (isLoopback(host)) return undefined;
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

/**
 * What the appliance warns about at start: an admin API or NBD server reachable from other
 * machines without TLS carries tokens and data in clear text.
 */
export function exposureWarnings(listeners: {
  http: { host: string; tls: boolean };
  nbd?: { host: string; tls: NbdTlsMode };
}): string[] {
  const warnings: string[] = [];
  const { http, nbd } = listeners;
  if (!isLoopback(http.host) && !http.tls) {
    warnings.push(
      `the admin API listens on ${http.host}, which is not loopback, without TLS: tokens and requests ` +
        'cross the network in clear text; give --http-tls-cert and --http-tls-key, or bind 127.0.0.1',
    );
  }
  const nbdWarning = nbd && nbdExposureWarning(nbd.host, nbd.tls);
  if (nbdWarning !== undefined) warnings.push(nbdWarning);
  return warnings;
}
