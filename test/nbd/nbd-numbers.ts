/**
 * The NBD numbers the server tests use, in one namespace: the protocol's wire numbers and the
 * server's own bounds (which the tests drive a server up to and past).
 */
export * from '../../src/nbd/protocol/constants.js';
export * from '../../src/nbd/server/limits.js';
