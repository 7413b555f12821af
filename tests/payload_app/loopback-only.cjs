// Preloaded into every Node process of the test app (NODE_OPTIONS=--require): the tests promise
// that nothing leaves 127.0.0.1, and `next dev` would otherwise ask registry.npmjs.org for the
// latest Next version. Unix sockets and loopback TCP pass; anything else fails like a refusal.
'use strict'
const net = require('node:net')

const isLoopback = (host) =>
  host === undefined ||
  host === null ||
  host === '' ||
  host === 'localhost' ||
  host === '::1' ||
  host === '[::1]' ||
  /^127\./.test(String(host))

const connect = net.Socket.prototype.connect
net.Socket.prototype.connect = function guardedConnect(...args) {
  // net.connect() passes its normalised [options, callback] array; direct callers pass
  // (options), (port, host) or (path).
  const first = Array.isArray(args[0]) ? args[0][0] : args[0]
  let host
  if (first !== null && typeof first === 'object') {
    host = first.path ? undefined : first.host
  } else if (typeof first === 'number' || /^\d+$/.test(String(first))) {
    host = typeof args[1] === 'string' ? args[1] : undefined
  }
  if (!isLoopback(host)) {
    const err = new Error(`loopback-only guard refused a connection to ${host}`)
    err.code = 'ECONNREFUSED'
    process.stderr.write(`[loopback-only] refused a connection to ${host}\n`)
    process.nextTick(() => this.destroy(err))
    return this
  }
  return connect.apply(this, args)
}
