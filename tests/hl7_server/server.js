// An independent MLLP peer for the HL7 back-load tests: node-hl7-server on 127.0.0.1, a free port.
// Usage: node server.js MODE FAIL_TIMES   (MODE: AA, AE, AR, silent, drop; after FAIL_TIMES answers in
// MODE for one control id, that id is answered AA). Prints {"port": N} once listening, then one line per
// message: "RECV <control id>" and, when accepted the first time, "ACCEPT <control id>".
'use strict'
const { Server } = require('node-hl7-server')

const mode = process.argv[2] || 'AA'
const failTimes = Number(process.argv[3] || '1000000000')
const seen = new Map()
const accepted = new Set()

const server = new Server({ bindAddress: '127.0.0.1' })
const inbound = server.createInbound({ port: 0 }, async (req, res) => {
  const message = req.getMessage()
  const cid = message.get('MSH.10').toString()
  const n = (seen.get(cid) || 0) + 1
  seen.set(cid, n)
  process.stdout.write(`RECV ${cid}\n`)
  const answer = n <= failTimes ? mode : 'AA'
  if (answer === 'silent') return
  if (answer === 'drop') {
    for (const socket of inbound._sockets) socket.destroy()
    return
  }
  if (answer === 'AA' && !accepted.has(cid)) {
    accepted.add(cid)
    process.stdout.write(`ACCEPT ${cid}\n`)
  }
  await res.sendResponse(answer)
})
inbound.on('listen', () => {
  process.stdout.write(JSON.stringify({ port: inbound._socket.address().port }) + '\n')
})
process.on('SIGTERM', async () => {
  await inbound.close()
  process.exit(0)
})
