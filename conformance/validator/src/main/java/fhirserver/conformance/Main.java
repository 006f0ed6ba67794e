package fhirserver.conformance;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

/**
 * Entry point of the conformance harness.
 *
 * <pre>
 *   serve [--port N] [--threads N]   long-lived validator on 127.0.0.1 (port 0: any free port); see ValidatorServer
 *   validate FILE...                 validate JSON files once, print issues, exit 1 on error or fatal
 *   client BASE_URL                  HAPI generic client with a strict parser against a running server
 * </pre>
 */
public final class Main {
    private Main() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            usage();
        }
        switch (args[0]) {
            case "serve" -> {
                int port = 0;
                int threads = Math.max(1, Runtime.getRuntime().availableProcessors());
                for (int i = 1; i + 1 < args.length; i += 2) {
                    switch (args[i]) {
                        case "--port" -> port = Integer.parseInt(args[i + 1]);
                        case "--threads" -> threads = Integer.parseInt(args[i + 1]);
                        default -> usage();
                    }
                }
                ValidatorServer.run(port, threads);
            }
            case "validate" -> System.exit(validateFiles(List.of(args).subList(1, args.length)));
            case "client" -> {
                if (args.length != 2) {
                    usage();
                }
                System.exit(ClientDriver.run(args[1]));
            }
            default -> usage();
        }
    }

    private static int validateFiles(List<String> files) throws Exception {
        ValidatorEngine engine = new ValidatorEngine();
        int errors = 0;
        for (String file : files) {
            String json = Files.readString(Path.of(file), StandardCharsets.UTF_8);
            for (Map<String, Object> issue : engine.validate(json)) {
                Object severity = issue.get("severity");
                if ("error".equals(severity) || "fatal".equals(severity)) {
                    errors++;
                }
                System.out.println(file + ": " + severity + " " + issue.get("location") + ": " + issue.get("message")
                        + " [" + issue.get("code") + "]");
            }
        }
        return errors == 0 ? 0 : 1;
    }

    private static void usage() {
        System.err.println("usage: Main serve [--port N] [--threads N] | validate FILE... | client BASE_URL");
        System.exit(2);
    }
}
