package fhirserver.conformance;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;

/**
 * HAPI's {@link FhirInstanceValidator} over the default R4 validation support: the core StructureDefinitions,
 * ValueSets and CodeSystems of hl7.fhir.r4.core 4.0.1 (hapi-fhir-validation-resources-r4), in-memory terminology
 * for the code systems those define, the common external systems (UCUM, BCP-47, MIME types, ISO countries and
 * currencies) and snapshot generation. No terminology server and no network: codes from systems HAPI does not hold
 * (SNOMED CT, LOINC, RxNorm...) cannot be checked and are reported as such by the validator itself.
 *
 * <p>{@link FhirValidator} is thread-safe; one engine serves every request thread.
 */
final class ValidatorEngine {
    private final FhirContext ctx;
    private final FhirValidator validator;

    ValidatorEngine() {
        ctx = FhirContext.forR4();
        ValidationSupportChain chain = new ValidationSupportChain(
                new DefaultProfileValidationSupport(ctx),
                new CommonCodeSystemsTerminologyService(ctx),
                new InMemoryTerminologyServerValidationSupport(ctx),
                new SnapshotGeneratingValidationSupport(ctx));
        FhirInstanceValidator module = new FhirInstanceValidator(chain);
        // A meta.profile this harness cannot resolve (only the core R4 package is loaded) is a claim it cannot check,
        // not an error of the resource: report it as a warning (HAPI's default makes it an error).
        module.setErrorForUnknownProfiles(false);
        validator = ctx.newValidator().registerValidatorModule(module);
    }

    FhirContext context() {
        return ctx;
    }

    /** Validates one resource (JSON text) and answers its issues as plain maps, in the validator's order. */
    List<Map<String, Object>> validate(String json) {
        ValidationResult result = validator.validateWithResult(json);
        List<Map<String, Object>> issues = new ArrayList<>();
        for (SingleValidationMessage m : result.getMessages()) {
            Map<String, Object> issue = new LinkedHashMap<>();
            issue.put("severity", m.getSeverity() == null ? "error" : m.getSeverity().getCode().toLowerCase(Locale.ROOT));
            issue.put("code", m.getMessageId());
            issue.put("message", m.getMessage());
            issue.put("location", m.getLocationString());
            issue.put("line", m.getLocationLine());
            issue.put("col", m.getLocationCol());
            issues.add(issue);
        }
        return issues;
    }
}
