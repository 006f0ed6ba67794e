package fhirserver.conformance;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.parser.StrictErrorHandler;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.api.MethodOutcome;
import ca.uhn.fhir.rest.client.api.IClientInterceptor;
import ca.uhn.fhir.rest.client.api.IGenericClient;
import ca.uhn.fhir.rest.client.api.IHttpRequest;
import ca.uhn.fhir.rest.client.api.IHttpResponse;
import ca.uhn.fhir.rest.client.api.ServerValidationModeEnum;
import ca.uhn.fhir.rest.server.exceptions.ResourceGoneException;
import ca.uhn.fhir.rest.server.exceptions.ResourceNotFoundException;
import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.UUID;
import org.hl7.fhir.instance.model.api.IIdType;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.CapabilityStatement;
import org.hl7.fhir.r4.model.CodeableConcept;
import org.hl7.fhir.r4.model.Coding;
import org.hl7.fhir.r4.model.DateTimeType;
import org.hl7.fhir.r4.model.DateType;
import org.hl7.fhir.r4.model.Enumerations;
import org.hl7.fhir.r4.model.IdType;
import org.hl7.fhir.r4.model.Observation;
import org.hl7.fhir.r4.model.Patient;
import org.hl7.fhir.r4.model.Quantity;
import org.hl7.fhir.r4.model.Reference;
import org.hl7.fhir.r4.model.Resource;

/**
 * The HAPI generic client as a test driver: metadata, create, read, update, vread, history, search with paging and
 * _include, a transaction and a delete against a running server, every response parsed with HAPI's strict parser
 * ({@link StrictErrorHandler}: an unknown element, a bad value or a wrong type is an exception, not a warning).
 * Prints every request and one line per step; exit status 1 if any step failed.
 */
final class ClientDriver {
    /** One step of the script; answers what it saw, throws on anything unexpected. */
    @FunctionalInterface
    private interface Step {
        String run() throws Exception;
    }

    private final IGenericClient client;
    private final String family = "HapiDriver" + UUID.randomUUID().toString().replace("-", "").substring(0, 12);
    private final List<String> failed = new ArrayList<>();
    private int steps;

    private String patientId;
    private final List<String> searchIds = new ArrayList<>();
    private String txPatientId;
    private String txObservationId;

    private ClientDriver(String base) {
        FhirContext ctx = FhirContext.forR4();
        ctx.setParserErrorHandler(new StrictErrorHandler());
        ctx.getRestfulClientFactory().setServerValidationMode(ServerValidationModeEnum.NEVER);
        ctx.getRestfulClientFactory().setSocketTimeout(60_000);
        client = ctx.newRestfulGenericClient(base);
        client.setEncoding(EncodingEnum.JSON);
        client.registerInterceptor(new Printer());
    }

    static int run(String base) {
        ClientDriver d = new ClientDriver(base);
        System.out.println("HAPI generic client (strict parser) against " + base + ", family " + d.family);
        d.step("metadata", d::metadata);
        d.step("create", d::create);
        d.step("read", d::read);
        d.step("update", d::update);
        d.step("vread", d::vread);
        d.step("history", d::history);
        d.step("search paging", d::searchPaging);
        d.step("transaction", d::transaction);
        d.step("search _include", d::searchInclude);
        d.step("delete", d::delete);
        System.out.println(d.steps + " steps, " + d.failed.size() + " failed" + (d.failed.isEmpty() ? "" : ": " + d.failed));
        return d.failed.isEmpty() ? 0 : 1;
    }

    private void step(String name, Step step) {
        steps++;
        System.out.println("== " + name);
        try {
            System.out.println("PASS " + name + ": " + step.run());
        } catch (Exception | AssertionError e) {
            failed.add(name);
            System.out.println("FAIL " + name + ": " + e.getClass().getSimpleName() + ": " + e.getMessage());
        }
        System.out.flush();
    }

    private static void check(boolean condition, String message) {
        if (!condition) {
            throw new AssertionError(message);
        }
    }

    private Patient newPatient(String given) {
        Patient p = new Patient();
        p.addName().setFamily(family).addGiven(given);
        p.addIdentifier().setSystem("urn:fhirserver:hapi-driver").setValue(family + "-" + given);
        p.setGender(Enumerations.AdministrativeGender.FEMALE);
        p.setBirthDateElement(new DateType("1980-02-03"));
        return p;
    }

    private String metadata() {
        CapabilityStatement cs = client.capabilities().ofType(CapabilityStatement.class).execute();
        check(cs.getFhirVersion() != null && "4.0.1".equals(cs.getFhirVersion().toCode()),
                "fhirVersion is " + cs.getFhirVersion());
        check(!cs.getRest().isEmpty(), "no rest entry");
        return "fhirVersion " + cs.getFhirVersion().toCode() + ", " + cs.getRestFirstRep().getResource().size()
                + " resource types";
    }

    private String create() {
        MethodOutcome out = client.create().resource(newPatient("Ada")).execute();
        IIdType id = out.getId();
        check(Boolean.TRUE.equals(out.getCreated()), "not reported as created (201)");
        check(id != null && id.hasIdPart(), "no id in Location");
        check("1".equals(id.getVersionIdPart()), "version is " + id.getVersionIdPart());
        patientId = id.getIdPart();
        return "Patient/" + patientId + "/_history/1";
    }

    private String read() {
        Patient p = client.read().resource(Patient.class).withId(patientId).execute();
        check(family.equals(p.getNameFirstRep().getFamily()), "family is " + p.getNameFirstRep().getFamily());
        check("1".equals(p.getMeta().getVersionId()), "meta.versionId is " + p.getMeta().getVersionId());
        check(p.getMeta().getLastUpdated() != null, "no meta.lastUpdated");
        check(patientId.equals(p.getIdElement().getIdPart()), "id is " + p.getIdElement().getIdPart());
        return "Patient/" + patientId + " version " + p.getMeta().getVersionId();
    }

    private String update() {
        Patient p = client.read().resource(Patient.class).withId(patientId).execute();
        p.setBirthDateElement(new DateType("1980-02-04"));
        MethodOutcome out = client.update().resource(p).execute();
        check(out.getId() != null && "2".equals(out.getId().getVersionIdPart()),
                "version after update is " + (out.getId() == null ? null : out.getId().getVersionIdPart()));
        Patient again = client.read().resource(Patient.class).withId(patientId).execute();
        check("1980-02-04".equals(again.getBirthDateElement().getValueAsString()),
                "birthDate is " + again.getBirthDateElement().getValueAsString());
        return "Patient/" + patientId + " now version 2";
    }

    private String vread() {
        Patient v1 = client.read().resource(Patient.class).withIdAndVersion(patientId, "1").execute();
        check("1980-02-03".equals(v1.getBirthDateElement().getValueAsString()),
                "version 1 birthDate is " + v1.getBirthDateElement().getValueAsString());
        return "Patient/" + patientId + "/_history/1 has the original birthDate";
    }

    private String history() {
        Bundle h = client.history().onInstance(new IdType("Patient", patientId)).returnBundle(Bundle.class).execute();
        check(h.getType() == Bundle.BundleType.HISTORY, "Bundle.type is " + h.getType());
        check(h.getEntry().size() == 2, h.getEntry().size() + " entries");
        return h.getEntry().size() + " versions";
    }

    private String searchPaging() {
        searchIds.add(patientId);
        for (String given : List.of("Bea", "Cy", "Di", "Ed")) {
            searchIds.add(client.create().resource(newPatient(given)).execute().getId().getIdPart());
        }
        Bundle page = client.search().forResource(Patient.class)
                .where(Patient.FAMILY.matchesExactly().value(family))
                .count(2)
                .returnBundle(Bundle.class)
                .execute();
        Set<String> seen = new LinkedHashSet<>();
        int pages = 0;
        while (true) {
            pages++;
            check(page.getType() == Bundle.BundleType.SEARCHSET, "Bundle.type is " + page.getType());
            check(page.getEntry().size() <= 2, "page of " + page.getEntry().size() + " entries with _count=2");
            for (Bundle.BundleEntryComponent e : page.getEntry()) {
                check(e.getResource() instanceof Patient, "entry is " + e.getResource());
                check(seen.add(e.getResource().getIdElement().getIdPart()), "repeated " + e.getFullUrl());
            }
            if (page.getLink(Bundle.LINK_NEXT) == null) {
                break;
            }
            check(pages < 10, "more than 10 pages");
            page = client.loadPage().next(page).execute();
        }
        check(seen.equals(new LinkedHashSet<>(searchIds)), "found " + seen + ", expected " + searchIds);
        check(pages == 3, pages + " pages for 5 matches with _count=2");
        return seen.size() + " patients in " + pages + " pages";
    }

    private String transaction() {
        String patientUuid = "urn:uuid:" + UUID.randomUUID();
        Bundle tx = new Bundle();
        tx.setType(Bundle.BundleType.TRANSACTION);
        tx.addEntry().setFullUrl(patientUuid).setResource(newPatient("Tx"))
                .getRequest().setMethod(Bundle.HTTPVerb.POST).setUrl("Patient");
        Observation obs = new Observation();
        obs.setStatus(Observation.ObservationStatus.FINAL);
        obs.setCode(new CodeableConcept(new Coding("http://loinc.org", "2339-0", "Glucose")));
        obs.setSubject(new Reference(patientUuid));
        obs.setEffective(new DateTimeType("2024-03-05T10:00:00Z"));
        obs.setValue(new Quantity().setValue(new BigDecimal("6.30")).setUnit("mmol/L")
                .setSystem("http://unitsofmeasure.org").setCode("mmol/L"));
        tx.addEntry().setFullUrl("urn:uuid:" + UUID.randomUUID()).setResource(obs)
                .getRequest().setMethod(Bundle.HTTPVerb.POST).setUrl("Observation");
        Patient existing = client.read().resource(Patient.class).withId(patientId).execute();
        existing.setGender(Enumerations.AdministrativeGender.OTHER);
        tx.addEntry().setFullUrl(existing.getIdElement().toUnqualifiedVersionless().getValue()).setResource(existing)
                .getRequest().setMethod(Bundle.HTTPVerb.PUT).setUrl("Patient/" + patientId);

        Bundle resp = client.transaction().withBundle(tx).execute();
        check(resp.getType() == Bundle.BundleType.TRANSACTIONRESPONSE, "Bundle.type is " + resp.getType());
        check(resp.getEntry().size() == 3, resp.getEntry().size() + " entries");
        List<String> statuses = new ArrayList<>();
        for (Bundle.BundleEntryComponent e : resp.getEntry()) {
            statuses.add(e.getResponse().getStatus());
        }
        check(statuses.get(0).startsWith("201") && statuses.get(1).startsWith("201")
                && statuses.get(2).startsWith("200"), "statuses " + statuses);
        txPatientId = new IdType(resp.getEntry().get(0).getResponse().getLocation()).getIdPart();
        txObservationId = new IdType(resp.getEntry().get(1).getResponse().getLocation()).getIdPart();
        Observation stored = client.read().resource(Observation.class).withId(txObservationId).execute();
        String subject = stored.getSubject().getReference();
        check(("Patient/" + txPatientId).equals(subject), "subject is " + subject + ", not Patient/" + txPatientId);
        check(new BigDecimal("6.30").equals(stored.getValueQuantity().getValue()),
                "value is " + stored.getValueQuantity().getValue());
        return "statuses " + statuses + ", Observation/" + txObservationId + " -> " + subject;
    }

    private String searchInclude() {
        check(txObservationId != null, "needs the transaction's Observation");
        Bundle b = client.search().forResource(Observation.class)
                .where(Observation.SUBJECT.hasId("Patient/" + txPatientId))
                .include(Observation.INCLUDE_SUBJECT)
                .returnBundle(Bundle.class)
                .execute();
        int matches = 0;
        int includes = 0;
        for (Bundle.BundleEntryComponent e : b.getEntry()) {
            Resource r = e.getResource();
            Bundle.SearchEntryMode mode = e.getSearch().getMode();
            if (r instanceof Observation && mode == Bundle.SearchEntryMode.MATCH) {
                matches++;
            } else if (r instanceof Patient && mode == Bundle.SearchEntryMode.INCLUDE) {
                includes++;
            }
        }
        check(matches == 1 && includes == 1, matches + " matches and " + includes + " includes");
        return "1 Observation matched, its Patient included";
    }

    private String delete() {
        String victim = searchIds.get(searchIds.size() - 1);
        client.delete().resourceById(new IdType("Patient", victim)).execute();
        try {
            client.read().resource(Patient.class).withId(victim).execute();
        } catch (ResourceGoneException e) {
            return "Patient/" + victim + " deleted, read answers 410 Gone";
        } catch (ResourceNotFoundException e) {
            return "Patient/" + victim + " deleted, read answers 404";
        }
        throw new AssertionError("Patient/" + victim + " still readable after delete");
    }

    /** Prints each request and its status, so the output shows what the driver did. */
    private static final class Printer implements IClientInterceptor {
        private String last = "";

        @Override
        public void interceptRequest(IHttpRequest request) {
            last = request.getHttpVerbName() + " " + request.getUri();
        }

        @Override
        public void interceptResponse(IHttpResponse response) {
            System.out.println("  " + last + " -> " + response.getStatus());
        }
    }
}
