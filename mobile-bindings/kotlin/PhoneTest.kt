// The generated Kotlin bindings on the JVM, against the real library and a real desktop: the
// core flow of a phone app (open, listen, pair, send, approve, result, history).
//
// Built and run by scripts/test-bindings: kotlinc compiles this file with
// uniffi/errand_ffi/errand_ffi.kt (JNA and kotlinx-coroutines on the class path), and java runs
// it with -Djna.library.path=target/debug. The desktop is `errand up` (ERRAND_BIN) with the
// default policy, on loopback. Every wait is on listener events, with a deadline.

import java.io.File
import java.nio.file.Files
import java.util.concurrent.TimeUnit
import kotlin.system.exitProcess
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import uniffi.errand_ffi.ApprovalState
import uniffi.errand_ffi.ErrandException
import uniffi.errand_ffi.Node
import uniffi.errand_ffi.NodeEvent
import uniffi.errand_ffi.NodeListener
import uniffi.errand_ffi.TaskStatus

const val DEADLINE_MS = 60_000L

class Recorder : NodeListener {
    private val lock = Object()
    private val events = mutableListOf<NodeEvent>()

    override fun onEvent(event: NodeEvent) {
        synchronized(lock) {
            events.add(event)
            lock.notifyAll()
        }
    }

    fun statuses(taskId: String): List<TaskStatus> = synchronized(lock) {
        events.filterIsInstance<NodeEvent.TaskChanged>().filter { it.taskId == taskId }.map { it.status }
    }

    suspend fun waitFor(what: String, pred: (NodeEvent) -> Boolean): NodeEvent = withContext(Dispatchers.IO) {
        val deadline = System.currentTimeMillis() + DEADLINE_MS
        synchronized(lock) {
            while (true) {
                events.firstOrNull(pred)?.let { return@withContext it }
                val left = deadline - System.currentTimeMillis()
                if (left <= 0) throw AssertionError("no $what event within ${DEADLINE_MS / 1000} s; events:\n  " + events.joinToString("\n  "))
                lock.wait(left)
            }
            @Suppress("UNREACHABLE_CODE")
            throw IllegalStateException()
        }
    }
}

/** A listener that throws on every call: the events must go on, the app must not crash. */
class Throwing : NodeListener {
    @Volatile var calls = 0
    override fun onEvent(event: NodeEvent) {
        calls++
        throw IllegalStateException("a bug in the app's listener")
    }
}

fun check(condition: Boolean, message: () -> String) {
    if (!condition) throw AssertionError(message())
}

class Desktop(root: File, private val errand: String) {
    val home = File(root, "desk")
    private val policy = File(root, "policy.toml").apply { writeText("[actions]\nshell = \"ask\"\n") }
    private val ticketFile = File(root, "ticket.txt")
    val log = File(root, "desk.log")
    private var process: Process? = null

    fun up(): String {
        val pb = ProcessBuilder(errand, "--home", home.path, "up", "--name", "desk", "--yes",
            "--ticket-file", ticketFile.path, "--policy", policy.path)
        pb.environment()["ERRAND_BIND"] = "127.0.0.1:0"
        pb.environment()["ERRAND_NO_MDNS"] = "true"
        pb.redirectErrorStream(true).redirectOutput(log).redirectInput(ProcessBuilder.Redirect.from(File("/dev/null")))
        val p = pb.start()
        process = p
        val deadline = System.currentTimeMillis() + DEADLINE_MS
        while (true) {
            val text = if (ticketFile.exists()) ticketFile.readText() else ""
            if (text.endsWith("\n")) return text.trim()
            check(p.isAlive) { "errand up exited with ${p.exitValue()}:\n${log.readText()}" }
            check(System.currentTimeMillis() < deadline) { "errand up wrote no ticket in time:\n${log.readText()}" }
            Thread.sleep(20)
        }
    }

    fun stop() {
        process?.let {
            it.destroy()
            if (!it.waitFor(10, TimeUnit.SECONDS)) it.destroyForcibly().waitFor()
        }
        process = null
    }
}

fun main() {
    val errand = System.getenv("ERRAND_BIN") ?: "target/debug/errand"
    val root = Files.createTempDirectory("errand-kotlin-").toFile()
    val desk = Desktop(root, errand)
    var failed = false
    runBlocking {
        val rec = Recorder()
        val throwing = Throwing()
        var phone: Node? = null
        try {
            val ticket = desk.up()
            val node = Node.open(File(root, "phone").path, "127.0.0.1:0")
            phone = node
            check(!node.status().paired) { "a fresh node is not paired" }
            try {
                node.send("hello")
                throw AssertionError("sending before pairing must fail")
            } catch (e: ErrandException.NotPaired) {
                check(e.message!!.contains("not paired")) { "unreadable message: ${e.message}" }
            }

            node.subscribe(throwing)
            node.subscribe(rec)
            val paired = node.pair(ticket, "pocket")
            check(paired.hostName == "desk") { "paired with ${paired.hostName}" }
            println("kotlin: paired with ${paired.hostName} (code ${paired.code})")

            val sent = node.send("/sh echo hi")
            val task = sent.taskId
            val asked = rec.waitFor("approval requested") {
                it is NodeEvent.ApprovalRequested && it.taskId == task
            } as NodeEvent.ApprovalRequested
            println("kotlin: approval requested: ${asked.action}")
            val decided = node.decide(asked.approvalId, true)
            check(decided.state == ApprovalState.APPROVED) { "decision: $decided" }

            val done = rec.waitFor("task done") {
                it is NodeEvent.TaskChanged && it.taskId == task && it.status == TaskStatus.DONE
            } as NodeEvent.TaskChanged
            check(done.result?.trim() == "hi") { "result: ${done.result}" }
            val statuses = rec.statuses(task)
            check(statuses.last() == TaskStatus.DONE && TaskStatus.WAITING_APPROVAL in statuses.dropLast(1)) {
                "statuses: $statuses"
            }
            println("kotlin: task done with result ${done.result?.trim()} after $statuses")

            val record = node.task(task)
            check(record.status == TaskStatus.DONE && record.result?.trim() == "hi") { "task: $record" }
            val history = node.history(sent.threadId)
            check(history.any { it.device == "pocket" && it.message.contains("approved by pocket") }) {
                "history: $history"
            }
            println("kotlin: history has ${history.size} commits")
            check(throwing.calls >= 3) { "the throwing listener was called ${throwing.calls} times" }
        } catch (e: Throwable) {
            failed = true
            System.err.println("kotlin: FAILED: $e")
            e.printStackTrace()
            System.err.println("--- desktop log ---\n" + (if (desk.log.exists()) desk.log.readText() else ""))
        } finally {
            phone?.shutdown()
            phone?.close()
            desk.stop()
        }
    }
    if (failed) {
        System.err.println("kotlin: kept ${root.path}")
        exitProcess(1)
    }
    root.deleteRecursively()
    println("kotlin: phone flow passed")
    exitProcess(0)
}
