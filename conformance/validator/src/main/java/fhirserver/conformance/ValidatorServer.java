package fhirserver.conformance;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * The long-lived validator: an HTTP server on the loopback interface only.
 *
 * <pre>
 *   POST /validate   body: one FHIR JSON resource (any type, Bundles included)
 *                    200 {"issues": [{"severity", "code", "message", "location", "line", "col"}],
 *                         "ms": wall milliseconds, "cpuMs": CPU milliseconds of the validating thread}
 *   GET  /health     200 ok
 * </pre>
 *
 * <p>Once listening it prints {@code LISTENING <port>} as its only line on standard output, then sends everything
 * else (HAPI's log) to standard error. It exits when its standard input reaches end of file, so it never outlives
 * the process that started it, even one that was killed.
 */
final class ValidatorServer {
    private static final ThreadMXBean THREADS = ManagementFactory.getThreadMXBean();

    private ValidatorServer() {
    }

    static void run(int port, int threads) throws IOException {
        ValidatorEngine engine = new ValidatorEngine();
        HttpServer server = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), port), 64);
        server.createContext("/validate", exchange -> handleValidate(engine, exchange));
        server.createContext("/health", exchange -> reply(exchange, 200, "text/plain", "ok"));
        ExecutorService pool = Executors.newFixedThreadPool(threads, r -> {
            Thread t = new Thread(r, "validate");
            t.setDaemon(true);
            return t;
        });
        server.setExecutor(pool);
        server.start();

        PrintStream stdout = System.out;
        stdout.println("LISTENING " + server.getAddress().getPort());
        stdout.flush();
        System.setOut(System.err);

        // The parent closes our standard input (or dies): stop.
        InputStream stdin = System.in;
        byte[] sink = new byte[256];
        while (stdin.read(sink) >= 0) {
            // Nothing is expected on standard input; its end is the signal.
        }
        server.stop(0);
        pool.shutdownNow();
        System.exit(0);
    }

    private static void handleValidate(ValidatorEngine engine, HttpExchange exchange) throws IOException {
        try (exchange) {
            if (!"POST".equals(exchange.getRequestMethod())) {
                reply(exchange, 405, "text/plain", "POST a FHIR JSON resource");
                return;
            }
            String body = new String(exchange.getRequestBody().readAllBytes(), StandardCharsets.UTF_8);
            long start = System.nanoTime();
            long cpuStart = THREADS.getCurrentThreadCpuTime();
            Map<String, Object> answer = new LinkedHashMap<>();
            try {
                List<Map<String, Object>> issues = engine.validate(body);
                answer.put("issues", issues);
            } catch (RuntimeException e) {
                // The validator itself failed (not the resource): a fatal issue, so it is never silently passed.
                Map<String, Object> issue = new LinkedHashMap<>();
                issue.put("severity", "fatal");
                issue.put("code", "harness-exception");
                issue.put("message", e.getClass().getName() + ": " + e.getMessage());
                issue.put("location", null);
                answer.put("issues", List.of(issue));
            }
            answer.put("ms", (System.nanoTime() - start) / 1_000_000.0);
            answer.put("cpuMs", (THREADS.getCurrentThreadCpuTime() - cpuStart) / 1_000_000.0);
            reply(exchange, 200, "application/json", Json.write(answer));
        }
    }

    private static void reply(HttpExchange exchange, int status, String type, String text) throws IOException {
        byte[] bytes = text.getBytes(StandardCharsets.UTF_8);
        exchange.getResponseHeaders().set("Content-Type", type + "; charset=utf-8");
        exchange.sendResponseHeaders(status, bytes.length);
        try (OutputStream out = exchange.getResponseBody()) {
            out.write(bytes);
        }
    }
}
